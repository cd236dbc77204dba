// SPDX-License-Identifier: GPL-2.0
/*
 * vmtest_mutex_tests: the Linux twin of the wdk-mutex test driver. Loading it runs the scenarios
 * named in scenarios= (by default every one that is not a negative control, those the catalogue
 * marks last at the end) in module init, and prints what happens as vmtest event lines
 * (drivers/PROTOCOL.md, drivers/scenarios.json) from run-start to run-end. An unknown scenario or a
 * parameter out of the catalogue's range fails the load with -EINVAL, naming it.
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

static int threads = VM_THREADS_DEFAULT;
module_param(threads, int, 0444);
MODULE_PARM_DESC(threads, "threads of the contention scenarios (see drivers/scenarios.json)");

static int iterations = VM_ITERATIONS_DEFAULT;
module_param(iterations, int, 0444);
MODULE_PARM_DESC(iterations, "lock iterations per thread (see drivers/scenarios.json)");

atomic64_t vm_seq = ATOMIC64_INIT(0);

#define VM_MAX_CHOSEN 32

static int vm_find(const char *name)
{
	unsigned int i;

	for (i = 0; i < VM_SCENARIO_COUNT; i++)
		if (!strcmp(vm_scenarios[i].name, name))
			return i;
	return -1;
}

/*
 * Fills chosen[] with catalogue indices from the scenarios parameter (default: every scenario but
 * the negative controls, those marked last at the end); a negative errno for an unknown name.
 */
static int vm_choose(unsigned int *chosen, unsigned int *count)
{
	char *list, *cursor, *name;
	int err = 0, index;
	unsigned int i;
	bool last;

	*count = 0;
	if (!scenarios) {
		for (last = false; *count < VM_SCENARIO_COUNT; last = true) {
			for (i = 0; i < VM_SCENARIO_COUNT; i++)
				if (!vm_scenarios[i].negative && vm_scenarios[i].last == last)
					chosen[(*count)++] = i;
			if (last)
				break;
		}
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
		index = vm_find(name);
		if (index < 0) {
			pr_err("%s: unknown scenario '%s'\n", VM_DRIVER_NAME, name);
			err = -EINVAL;
			break;
		}
		chosen[(*count)++] = index;
	}
	kfree(list);
	return err;
}

static int __init vm_mutex_tests_init(void)
{
	unsigned int chosen[VM_MAX_CHOSEN];
	struct vm_params params = { .threads = threads, .iterations = iterations };
	unsigned int count, i;
	int err;

	BUILD_BUG_ON(VM_SCENARIO_COUNT > VM_MAX_CHOSEN);
	if (threads < VM_THREADS_MIN || threads > VM_THREADS_MAX) {
		pr_err("%s: threads=%d is out of range %d-%d\n", VM_DRIVER_NAME, threads,
		       VM_THREADS_MIN, VM_THREADS_MAX);
		return -EINVAL;
	}
	if (iterations < VM_ITERATIONS_MIN || iterations > VM_ITERATIONS_MAX) {
		pr_err("%s: iterations=%d is out of range %d-%d\n", VM_DRIVER_NAME, iterations,
		       VM_ITERATIONS_MIN, VM_ITERATIONS_MAX);
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
