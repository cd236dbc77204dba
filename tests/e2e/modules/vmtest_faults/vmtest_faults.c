// SPDX-License-Identifier: GPL-2.0
/*
 * vmtest_faults: a module for vmtest's fault-injection suite (tests/faults). It speaks the event
 * protocol (drivers/PROTOCOL.md) for whatever scenario names it is given, and misbehaves on request:
 *
 *   mode=pass         every scenario starts and ends (outcome=done) in init
 *   mode=slowload     init sleeps delay_ms first, then passes (insmod takes that long)
 *   mode=slowcapture  init returns at once; a work item prints the scenarios delay_ms later
 *   mode=slowunload   passes in init; exit sleeps delay_ms (rmmod takes that long)
 *   mode=panic        the first scenario starts, then the kernel panics
 *   mode=hang         the first scenario starts, then init sleeps until a signal (insmod never returns)
 *   mode=hostile      passes, printing terminal escapes, control bytes and long lines on the way
 *   mode=fail         prints hostile text, then init returns -EINVAL (the load fails)
 *
 * It accepts the threads= and iterations= parameters vmtest passes to every driver, and ignores them.
 */
#include <linux/delay.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/workqueue.h>

static char *scenarios = "fault_a";
module_param(scenarios, charp, 0444);
MODULE_PARM_DESC(scenarios, "comma-separated scenario names");

static int threads = 1;
module_param(threads, int, 0444);
static int iterations = 1;
module_param(iterations, int, 0444);

static char *mode = "pass";
module_param(mode, charp, 0444);
MODULE_PARM_DESC(mode, "pass, slowload, slowcapture, slowunload, panic, hang, hostile or fail");

static int delay_ms = 4000;
module_param(delay_ms, int, 0444);
MODULE_PARM_DESC(delay_ms, "how long the slow modes sleep");

static unsigned long long seq;

#define EVENT(fmt, ...) pr_info("VMTEST1 seq=%llu " fmt "\n", ++seq, ##__VA_ARGS__)

static bool is_mode(const char *name)
{
	return !strcmp(mode, name);
}

static void hostile_text(void)
{
	static char long_line[900];

	/* Terminal escapes: clear screen, set the window title, a hyperlink, a bell, a cursor move. */
	pr_info("vmtest_faults: \x1b[2J\x1b[H\x1b]0;pwned-title\x07 \x1b]8;;http://example.invalid\x1b\\link\x1b]8;;\x1b\\ \x1b[31mred\x1b[0m\n");
	/* Control and high bytes, a carriage return that would overwrite the line on a terminal. */
	pr_info("vmtest_faults: bytes \x01\x02\x7f\x80\xfe\xff <script>alert(1)</script>\roverwritten\n");
	memset(long_line, 'L', sizeof(long_line) - 1);
	long_line[sizeof(long_line) - 1] = '\0';
	pr_info("vmtest_faults: long %s\n", long_line);
	/* A protocol line with escapes in its free text. */
	EVENT("ev=scenario-start sc=hostile_msg params=-");
	EVENT("ev=scenario-end sc=hostile_msg outcome=error msg=\x1b]0;pwned-title\x07\x1b[2Jescaped <b>bold</b> & more");
}

static void run_all(void)
{
	char *list, *cursor, *name;
	int count = 0;

	list = kstrdup(scenarios, GFP_KERNEL);
	if (!list)
		return;
	cursor = list;
	while ((name = strsep(&cursor, ",")) != NULL) {
		if (!*name)
			continue;
		count++;
		EVENT("ev=scenario-start sc=%s params=-", name);
		EVENT("ev=scenario-end sc=%s outcome=done", name);
	}
	kfree(list);
	EVENT("ev=run-end scenarios=%d", count + (is_mode("hostile") ? 1 : 0));
}

static char *first_scenario(void)
{
	static char first[64];
	size_t length = strcspn(scenarios, ",");

	strscpy(first, scenarios, min(length + 1, sizeof(first)));
	return first;
}

static void late_scenarios(struct work_struct *work)
{
	run_all();
}

static DECLARE_DELAYED_WORK(late_work, late_scenarios);

static int __init vmtest_faults_init(void)
{
	pr_info("vmtest_faults: loading, mode=%s\n", mode);
	if (is_mode("fail")) {
		hostile_text();
		return -EINVAL;
	}
	EVENT("ev=run-start driver=vmtest_faults proto=1 os=linux");
	if (is_mode("panic")) {
		EVENT("ev=scenario-start sc=%s params=-", first_scenario());
		panic("vmtest_faults: panic on purpose in %s", first_scenario());
	}
	if (is_mode("hang")) {
		EVENT("ev=scenario-start sc=%s params=-", first_scenario());
		while (!signal_pending(current))
			msleep_interruptible(200);
		return -EINTR;
	}
	if (is_mode("slowload"))
		msleep_interruptible(delay_ms);
	if (is_mode("hostile"))
		hostile_text();
	if (is_mode("slowcapture")) {
		schedule_delayed_work(&late_work, msecs_to_jiffies(delay_ms));
		return 0;
	}
	run_all();
	return 0;
}

static void __exit vmtest_faults_exit(void)
{
	cancel_delayed_work_sync(&late_work);
	if (is_mode("slowunload"))
		msleep(delay_ms);
	pr_info("vmtest_faults: unloaded\n");
}

module_init(vmtest_faults_init);
module_exit(vmtest_faults_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmtest: a module that misbehaves on request, for the fault-injection suite");
