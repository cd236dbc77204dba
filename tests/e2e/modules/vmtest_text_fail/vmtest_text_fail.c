// SPDX-License-Identifier: GPL-2.0
/*
 * vmtest_text_fail: the failing twin of vmtest_text_pass: one test fails, in the upstream
 * wdk_mutex_tests wording ("[wdk-mutex-test] [-] Test <name> failed.").
 */
#include <linux/init.h>
#include <linux/module.h>

static int __init vmtest_text_fail_init(void)
{
	pr_info("[wdk-mutex-test] [i] Starting tests.\n");
	pr_info("[wdk-mutex-test] [i] Starting test_kmutex_basic\n");
	pr_info("[wdk-mutex-test] [-] Test test_kmutex_recursion failed.\n");
	return 0;
}

static void __exit vmtest_text_fail_exit(void)
{
	pr_info("vmtest_text_fail: unloaded\n");
}

module_init(vmtest_text_fail_init);
module_exit(vmtest_text_fail_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmtest: a module printing its own failing results");
