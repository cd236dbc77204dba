// SPDX-License-Identifier: GPL-2.0
/*
 * vmtest_mutex_tests: the Linux twin of the wdk-mutex test driver. Loading it runs the scenarios
 * named in scenarios= (by default every one that is not a negative control) in module init, and
 * prints what happens as vmtest event lines (drivers/PROTOCOL.md) from run-start to run-end.
 */
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "scenarios.h"
#include "vm_events.h"
#include "vm_mutex.h"

static char *scenarios;
module_param(scenarios, charp, 0444);
MODULE_PARM_DESC(scenarios, "comma-separated scenario names (default: all but the neg_* controls)");

static int threads = 3;
module_param(threads, int, 0444);
MODULE_PARM_DESC(threads, "threads of the contention scenarios (1-16, default 3)");

static int iterations = 500;
module_param(iterations, int, 0444);
MODULE_PARM_DESC(iterations, "lock iterations per thread (1-100000, default 500)");

atomic64_t vm_seq = ATOMIC64_INIT(0);

#define VM_MAX_CHOSEN 32

static const struct vm_scenario *vm_find(const char *name)
{
	unsigned int i;

	for (i = 0; i < vm_scenario_count; i++)
		if (!strcmp(vm_scenarios[i].name, name))
			return &vm_scenarios[i];
	return NULL;
}

/* Fills chosen[] from the scenarios parameter; a negative errno for an unknown name. */
static int vm_choose(const struct vm_scenario **chosen, unsigned int *count)
{
	char *list, *cursor, *name;
	int err = 0;
	unsigned int i;

	*count = 0;
	if (!scenarios) {
		for (i = 0; i < vm_scenario_count; i++)
			if (!vm_scenarios[i].negative)
				chosen[(*count)++] = &vm_scenarios[i];
		return 0;
	}
	list = kstrdup(scenarios, GFP_KERNEL);
	if (!list)
		return -ENOMEM;
	cursor = list;
	while ((name = strsep(&cursor, ",")) != NULL) {
		name = strim(name);
		if (!*name)
			continue;
		if (*count == VM_MAX_CHOSEN) {
			pr_err("%s: more than %d scenarios requested\n", VM_DRIVER_NAME,
			       VM_MAX_CHOSEN);
			err = -E2BIG;
			break;
		}
		chosen[*count] = vm_find(name);
		if (!chosen[*count]) {
			pr_err("%s: unknown scenario '%s'\n", VM_DRIVER_NAME, name);
			err = -EINVAL;
			break;
		}
		(*count)++;
	}
	kfree(list);
	return err;
}

static int __init vm_mutex_tests_init(void)
{
	const struct vm_scenario *chosen[VM_MAX_CHOSEN];
	struct vm_params params = { .threads = threads, .iterations = iterations };
	unsigned int count, i;
	int err;

	if (threads < 1 || threads > VM_MAX_THREADS) {
		pr_err("%s: threads=%d is out of range 1-%d\n", VM_DRIVER_NAME, threads,
		       VM_MAX_THREADS);
		return -EINVAL;
	}
	if (iterations < 1 || iterations > VM_MAX_ITERATIONS) {
		pr_err("%s: iterations=%d is out of range 1-%d\n", VM_DRIVER_NAME, iterations,
		       VM_MAX_ITERATIONS);
		return -EINVAL;
	}
	err = vm_choose(chosen, &count);
	if (err)
		return err;

	vm_event(VM_EV_RUN_START, VM_DRIVER_NAME, VM_DRIVER_VERSION);
	for (i = 0; i < count; i++)
		vm_run_scenario(chosen[i], &params);
	vm_event(VM_EV_RUN_END, count);
	return 0;
}

static void __exit vm_mutex_tests_exit(void)
{
	/* the scenarios free what they make; a Grt left behind by a failure goes here */
	vm_grt_destroy();
	pr_info("%s: unloaded\n", VM_DRIVER_NAME);
}

module_init(vm_mutex_tests_init);
module_exit(vm_mutex_tests_exit);

MODULE_LICENSE("GPL");
MODULE_VERSION(VM_DRIVER_VERSION);
MODULE_DESCRIPTION("vmtest: wdk-mutex's contract on struct mutex, as vmtest events");
