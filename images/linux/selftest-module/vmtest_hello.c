// SPDX-License-Identifier: GPL-2.0
/*
 * vmtest_hello: the trivial module the image builder compiles against the unpacked kernel headers
 * to prove they work. It is kept in the image (selftest/vmtest_hello.ko) for guest self-tests.
 */
#include <linux/init.h>
#include <linux/module.h>

static int __init vmtest_hello_init(void)
{
	pr_info("vmtest_hello: loaded\n");
	return 0;
}

static void __exit vmtest_hello_exit(void)
{
	pr_info("vmtest_hello: unloaded\n");
}

module_init(vmtest_hello_init);
module_exit(vmtest_hello_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmtest: hello-world module proving the kernel headers build");
