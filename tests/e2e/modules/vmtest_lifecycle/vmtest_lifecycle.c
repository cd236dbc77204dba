// SPDX-License-Identifier: GPL-2.0
/*
 * vmtest_lifecycle: a module for vmtest's own driver-lifecycle tests. It prints its parameters when
 * loaded and unloaded, and its init returns init_result (a negative errno) when asked to fail.
 */
#include <linux/init.h>
#include <linux/module.h>

static char *greeting = "hello";
module_param(greeting, charp, 0444);
MODULE_PARM_DESC(greeting, "text printed at load");

static int count = 1;
module_param(count, int, 0444);
MODULE_PARM_DESC(count, "how many times to print the greeting");

static int init_result;
module_param(init_result, int, 0444);
MODULE_PARM_DESC(init_result, "what init returns: 0, or a negative errno to fail the load");

static int __init vmtest_lifecycle_init(void)
{
	int i;

	for (i = 0; i < count; i++)
		pr_info("vmtest_lifecycle: %s %d/%d\n", greeting, i + 1, count);
	return init_result;
}

static void __exit vmtest_lifecycle_exit(void)
{
	pr_info("vmtest_lifecycle: unloaded\n");
}

module_init(vmtest_lifecycle_init);
module_exit(vmtest_lifecycle_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmtest: module for the driver-lifecycle tests");
