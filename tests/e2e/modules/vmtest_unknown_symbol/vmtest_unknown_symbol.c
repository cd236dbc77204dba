// SPDX-License-Identifier: GPL-2.0
/*
 * vmtest_unknown_symbol: calls a function no kernel exports, so the loader refuses it ("Unknown
 * symbol") before its init could run: a load failure that is not the entry point's.
 */
#include <linux/init.h>
#include <linux/module.h>

extern int vmtest_no_such_symbol(void);

static int __init vmtest_unknown_symbol_init(void)
{
	return vmtest_no_such_symbol();
}

module_init(vmtest_unknown_symbol_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmtest: a module the loader refuses");
