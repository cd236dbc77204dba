// SPDX-License-Identifier: GPL-2.0
/*
 * vmtest_text_pass: prints its results the way the upstream wdk_mutex_tests driver does
 * ("[wdk-mutex-test] [i] Starting ...", "[wdk-mutex-test] [+] All tests passed!") and takes no
 * parameters: for vmtest's text mode.
 */
#include <linux/init.h>
#include <linux/module.h>

static int __init vmtest_text_pass_init(void)
{
	pr_info("[wdk-mutex-test] [i] Starting tests.\n");
	pr_info("[wdk-mutex-test] [i] Starting test_kmutex_basic\n");
	pr_info("[wdk-mutex-test] [i] Starting test_fast_mutex_basic\n");
	pr_info("[wdk-mutex-test] [+] All tests passed!\n");
	return 0;
}

static void __exit vmtest_text_pass_exit(void)
{
	pr_info("vmtest_text_pass: unloaded\n");
}

module_init(vmtest_text_pass_init);
module_exit(vmtest_text_pass_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmtest: a module printing its own passing results");
