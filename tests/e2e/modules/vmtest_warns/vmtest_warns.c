// SPDX-License-Identifier: GPL-2.0
/* vmtest_warns: WARNs in its init, then loads: a smoke test must fail and quote the warning. */
#include <linux/bug.h>
#include <linux/init.h>
#include <linux/module.h>

static int __init vmtest_warns_init(void)
{
	WARN(1, "vmtest_warns: a warning on purpose\n");
	return 0;
}

static void __exit vmtest_warns_exit(void)
{
	pr_info("vmtest_warns: unloaded\n");
}

module_init(vmtest_warns_init);
module_exit(vmtest_warns_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmtest: a module that WARNs when loaded");
