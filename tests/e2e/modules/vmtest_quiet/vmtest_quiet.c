// SPDX-License-Identifier: GPL-2.0
/* vmtest_quiet: no parameters, no protocol, no results: a module for vmtest's smoke mode. */
#include <linux/init.h>
#include <linux/module.h>

static int __init vmtest_quiet_init(void)
{
	pr_info("vmtest_quiet: loaded\n");
	return 0;
}

static void __exit vmtest_quiet_exit(void)
{
	pr_info("vmtest_quiet: unloaded\n");
}

module_init(vmtest_quiet_init);
module_exit(vmtest_quiet_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmtest: a module that loads and unloads quietly");
