// SPDX-License-Identifier: GPL-2.0
/*
 * The scenarios of drivers/PROTOCOL.md, each reporting what it does as event lines.
 *
 * Thread 0 is the task running the scenario (insmod's); the contention scenarios start threads
 * 1..N-1 as kthreads, run thread 0's loop themselves, and join the others with completions.
 */
#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/err.h>
#include <linux/irqflags.h>
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/preempt.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>

#include "scenarios.h"
#include "vm_events.h"
#include "vm_mutex.h"

/* Held to run code at DISPATCH_LEVEL the way a driver would get there: under a spinlock. */
static DEFINE_SPINLOCK(vm_dispatch_lock);

struct vm_thread {
	const char *sc;
	int t;
};

static void vm_ev_mutex(const char *sc, const struct vm_mutex *mutex)
{
	vm_event(VM_EV_MUTEX, sc, mutex->label, vm_kind_name(mutex->kind));
}

static void vm_ev_call(const struct vm_thread *th, const char *op, enum vm_ctx ctx,
		       enum vm_result result)
{
	vm_event(VM_EV_CALL, th->sc, th->t, op, vm_ctx_irql(ctx), vm_result_name(result),
		 vm_ctx_name(ctx));
}

static void vm_ev_call_mutex(const struct vm_thread *th, const char *op, const char *label,
			     enum vm_kind kind, enum vm_ctx ctx, enum vm_result result)
{
	vm_event(VM_EV_CALL_MUTEX, th->sc, th->t, op, label, vm_kind_name(kind), vm_ctx_irql(ctx),
		 vm_result_name(result), vm_ctx_name(ctx));
}

/* The guards' release hook: the release event, its seq taken while the mutex is still held. */
static void vm_on_release(const struct vm_guard *guard, unsigned int depth)
{
	const struct vm_thread *th = guard->hook_arg;
	const struct vm_mutex *mutex = guard->mutex;

	vm_event(VM_EV_RELEASE, th->sc, th->t, mutex->label, vm_kind_name(mutex->kind),
		 vm_current_irql(), depth);
}

/*
 * acquire, then lock(), then acquired once held. A call event follows when the lock was refused,
 * or always when report is set.
 */
static enum vm_result vm_lock(const struct vm_thread *th, struct vm_mutex *mutex,
			      struct vm_guard *guard, bool report)
{
	enum vm_ctx ctx = vm_current_ctx();
	enum vm_result result;

	vm_event(VM_EV_ACQUIRE, th->sc, th->t, mutex->label, vm_kind_name(mutex->kind),
		 vm_ctx_irql(ctx));
	result = vm_mutex_lock(mutex, guard);
	if (result == VM_OK) {
		guard->before_release = vm_on_release;
		guard->hook_arg = th;
		vm_event(VM_EV_ACQUIRED, th->sc, th->t, mutex->label, vm_kind_name(mutex->kind),
			 vm_current_irql(), guard->depth);
	}
	if (result != VM_OK || report)
		vm_ev_call_mutex(th, "lock", mutex->label, mutex->kind, ctx, result);
	return result;
}

/* drop_safe() with its call event (the release event comes from the hook when it releases). */
static enum vm_result vm_drop_safe(const struct vm_thread *th, struct vm_guard *guard)
{
	enum vm_ctx ctx = vm_current_ctx();
	enum vm_result result = vm_guard_drop_safe(guard);

	vm_ev_call_mutex(th, "drop_safe", guard->mutex->label, guard->mutex->kind, ctx, result);
	return result;
}

static enum vm_result vm_new(const struct vm_thread *th, const char *label, enum vm_kind kind,
			     u64 value, struct vm_mutex **out)
{
	enum vm_result result = vm_mutex_new(kind, &value, sizeof(value), out);

	if (result != VM_OK) {
		vm_ev_call_mutex(th, "new", label, kind, vm_current_ctx(), result);
		return result;
	}
	(*out)->label = label;
	vm_ev_mutex(th->sc, *out);
	return VM_OK;
}

static void vm_fail(struct vm_outcome *outcome, const char *fmt, ...) __printf(2, 3);

static void vm_fail(struct vm_outcome *outcome, const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	vsnprintf(outcome->msg, sizeof(outcome->msg), fmt, args);
	va_end(args);
	outcome->outcome = "error";
}

/* ---- worker threads ---------------------------------------------------------------------- */

struct vm_worker {
	struct vm_thread th;
	int iterations;
	int completed;
	void (*body)(struct vm_worker *worker);
	struct vm_mutex *first;		/* the counter, or a in the lock-order scenarios */
	struct vm_mutex *second;	/* b in the lock-order scenarios */
	const char *grt_label;		/* grt_contention: looked up by the thread itself */
	struct completion *wait_before;	/* neg_lock_inversion: start after this */
	struct completion *signal_after;
	struct completion *start;	/* every thread starts when all exist */
	struct completion done;
	bool started;
};

static int vm_worker_thread(void *arg)
{
	struct vm_worker *worker = arg;

	wait_for_completion(worker->start);
	worker->body(worker);
	kthread_complete_and_exit(&worker->done, 0);
}

/*
 * Runs worker 0 in this task (unless spawn_all) and the others as kthreads, and waits for all.
 * Returns 0, or the error of the first kthread that could not be created (the ones started are
 * still joined).
 */
static int vm_run_workers(struct vm_worker *workers, int count, bool spawn_all)
{
	struct completion start;
	struct task_struct *task;
	int i, err = 0;

	init_completion(&start);
	for (i = spawn_all ? 0 : 1; i < count; i++) {
		init_completion(&workers[i].done);
		workers[i].start = &start;
		task = kthread_run(vm_worker_thread, &workers[i], "vmtest_mtx/%d", i);
		if (IS_ERR(task)) {
			err = PTR_ERR(task);
			break;
		}
		workers[i].started = true;
	}
	complete_all(&start);
	if (!spawn_all)
		workers[0].body(&workers[0]);
	for (i = spawn_all ? 0 : 1; i < count; i++) {
		if (workers[i].started)
			wait_for_completion(&workers[i].done);
	}
	return err;
}

static void vm_thread_end(struct vm_worker *worker)
{
	vm_event(VM_EV_THREAD_END, worker->th.sc, worker->th.t, worker->completed);
}

/* One increment of the counter under the mutex, as a read and a separate write. */
static void vm_increment(struct vm_worker *worker, struct vm_mutex *mutex)
{
	struct vm_guard guard;
	u64 *counter;

	if (vm_lock(&worker->th, mutex, &guard, false) != VM_OK)
		return;
	counter = vm_guard_data(&guard);
	WRITE_ONCE(*counter, READ_ONCE(*counter) + 1);
	vm_guard_drop(&guard);
	worker->completed++;
}

static void vm_contend(struct vm_worker *worker)
{
	int i;

	for (i = 0; i < worker->iterations; i++)
		vm_increment(worker, worker->first);
	vm_thread_end(worker);
}

static void vm_grt_contend(struct vm_worker *worker)
{
	enum vm_ctx ctx = vm_current_ctx();
	enum vm_result result;

	result = vm_grt_get(worker->grt_label, VM_KMUTEX, VM_TYPE_U64, &worker->first);
	vm_ev_call_mutex(&worker->th, "grt_get", worker->grt_label, VM_KMUTEX, ctx, result);
	if (result != VM_OK) {
		worker->first = NULL;
		vm_thread_end(worker);
		return;
	}
	vm_contend(worker);
}

/* Takes first then second (or the reverse), increments both, releases in reverse order. */
static void vm_lock_pair(struct vm_worker *worker, struct vm_mutex *outer, struct vm_mutex *inner)
{
	struct vm_guard outer_guard, inner_guard;
	u64 *value;

	if (vm_lock(&worker->th, outer, &outer_guard, false) != VM_OK)
		return;
	if (vm_lock(&worker->th, inner, &inner_guard, false) == VM_OK) {
		value = vm_guard_data(&outer_guard);
		WRITE_ONCE(*value, READ_ONCE(*value) + 1);
		value = vm_guard_data(&inner_guard);
		WRITE_ONCE(*value, READ_ONCE(*value) + 1);
		vm_guard_drop(&inner_guard);
		worker->completed++;
	}
	vm_guard_drop(&outer_guard);
}

static void vm_lock_order(struct vm_worker *worker)
{
	int i;

	for (i = 0; i < worker->iterations; i++)
		vm_lock_pair(worker, worker->first, worker->second);
	vm_thread_end(worker);
}

/* Takes first then second once; the negative control's threads, spaced by completions. */
static void vm_lock_once(struct vm_worker *worker)
{
	if (worker->wait_before) {
		wait_for_completion(worker->wait_before);
		msleep(20);
	}
	vm_lock_pair(worker, worker->first, worker->second);
	vm_thread_end(worker);
	if (worker->signal_after)
		complete_all(worker->signal_after);
}

static struct vm_worker *vm_workers(const char *sc, int count, int iterations,
				    void (*body)(struct vm_worker *worker))
{
	struct vm_worker *workers = kcalloc(count, sizeof(*workers), GFP_KERNEL);
	int i;

	if (!workers)
		return NULL;
	for (i = 0; i < count; i++) {
		workers[i].th.sc = sc;
		workers[i].th.t = i;
		workers[i].iterations = iterations;
		workers[i].body = body;
	}
	return workers;
}

static void vm_counter(const char *sc, struct vm_mutex *mutex, u64 expected)
{
	u64 value = *(u64 *)vm_mutex_data(mutex);

	vm_event(VM_EV_COUNTER, sc, mutex->label, (unsigned long long)value,
		 (unsigned long long)expected);
}

/* ---- the scenarios ----------------------------------------------------------------------- */

static void vm_contention(const struct vm_scenario *scenario, const struct vm_params *params,
			  struct vm_outcome *outcome, enum vm_kind kind)
{
	struct vm_thread th = { .sc = scenario->name, .t = 0 };
	struct vm_worker *workers;
	struct vm_mutex *counter;
	int i, err;

	if (vm_new(&th, "counter", kind, 0, &counter) != VM_OK) {
		vm_fail(outcome, "could not create the mutex");
		return;
	}
	workers = vm_workers(scenario->name, params->threads, params->iterations, vm_contend);
	if (!workers) {
		vm_mutex_free(counter);
		vm_fail(outcome, "out of memory");
		return;
	}
	for (i = 0; i < params->threads; i++)
		workers[i].first = counter;
	err = vm_run_workers(workers, params->threads, false);
	if (err)
		vm_fail(outcome, "kthread_run failed: %d", err);
	else
		vm_counter(scenario->name, counter, (u64)params->threads * params->iterations);
	kfree(workers);
	vm_mutex_free(counter);
}

static void vm_sc_kmutex_contention(const struct vm_scenario *scenario,
				    const struct vm_params *params, struct vm_outcome *outcome)
{
	vm_contention(scenario, params, outcome, VM_KMUTEX);
}

static void vm_sc_fast_mutex_contention(const struct vm_scenario *scenario,
					const struct vm_params *params,
					struct vm_outcome *outcome)
{
	vm_contention(scenario, params, outcome, VM_FAST_MUTEX);
}

static void vm_sc_grt_contention(const struct vm_scenario *scenario,
				 const struct vm_params *params, struct vm_outcome *outcome)
{
	struct vm_thread th = { .sc = scenario->name, .t = 0 };
	struct vm_worker *workers;
	enum vm_result result;
	u64 zero = 0;
	int i, err;

	result = vm_grt_init();
	vm_ev_call(&th, "grt_init", vm_current_ctx(), result);
	if (result != VM_OK) {
		vm_fail(outcome, "Grt init failed");
		return;
	}
	result = vm_grt_register("counter", VM_KMUTEX, VM_TYPE_U64, &zero, sizeof(zero));
	vm_ev_call_mutex(&th, "grt_register", "counter", VM_KMUTEX, vm_current_ctx(), result);
	if (result != VM_OK) {
		vm_fail(outcome, "Grt register failed");
		goto destroy;
	}
	vm_event(VM_EV_MUTEX, scenario->name, "counter", vm_kind_name(VM_KMUTEX));
	workers = vm_workers(scenario->name, params->threads, params->iterations, vm_grt_contend);
	if (!workers) {
		vm_fail(outcome, "out of memory");
		goto destroy;
	}
	for (i = 0; i < params->threads; i++)
		workers[i].grt_label = "counter";
	err = vm_run_workers(workers, params->threads, false);
	if (err)
		vm_fail(outcome, "kthread_run failed: %d", err);
	else if (!workers[0].first)
		vm_fail(outcome, "thread 0 could not look the mutex up");
	else
		vm_counter(scenario->name, workers[0].first,
			   (u64)params->threads * params->iterations);
	kfree(workers);
destroy:
	vm_ev_call(&th, "grt_destroy", vm_current_ctx(), vm_grt_destroy());
}

static void vm_sc_kmutex_recursion(const struct vm_scenario *scenario,
				   const struct vm_params *params, struct vm_outcome *outcome)
{
	struct vm_thread th = { .sc = scenario->name, .t = 0 };
	struct vm_guard outer, inner;
	struct vm_mutex *mutex;

	if (vm_new(&th, "km", VM_KMUTEX, 0, &mutex) != VM_OK) {
		vm_fail(outcome, "could not create the mutex");
		return;
	}
	if (vm_lock(&th, mutex, &outer, true) == VM_OK) {
		if (vm_lock(&th, mutex, &inner, true) == VM_OK)
			vm_guard_drop(&inner);
		vm_guard_drop(&outer);
	}
	if (mutex_is_locked(&mutex->lock) || mutex->depth)
		vm_fail(outcome, "still locked after both releases (depth %u)", mutex->depth);
	vm_mutex_free(mutex);
}

static void vm_sc_lock_order_consistent(const struct vm_scenario *scenario,
					const struct vm_params *params,
					struct vm_outcome *outcome)
{
	struct vm_thread th = { .sc = scenario->name, .t = 0 };
	struct vm_worker *workers;
	struct vm_mutex *a, *b;
	u64 expected = (u64)params->threads * params->iterations;
	int i, err;

	if (vm_new(&th, "a", VM_KMUTEX, 0, &a) != VM_OK) {
		vm_fail(outcome, "could not create mutex a");
		return;
	}
	if (vm_new(&th, "b", VM_FAST_MUTEX, 0, &b) != VM_OK) {
		vm_mutex_free(a);
		vm_fail(outcome, "could not create mutex b");
		return;
	}
	workers = vm_workers(scenario->name, params->threads, params->iterations, vm_lock_order);
	if (!workers) {
		vm_fail(outcome, "out of memory");
		goto out;
	}
	for (i = 0; i < params->threads; i++) {
		workers[i].first = a;
		workers[i].second = b;
	}
	err = vm_run_workers(workers, params->threads, false);
	if (err) {
		vm_fail(outcome, "kthread_run failed: %d", err);
	} else {
		vm_counter(scenario->name, a, expected);
		vm_counter(scenario->name, b, expected);
	}
	kfree(workers);
out:
	vm_mutex_free(b);
	vm_mutex_free(a);
}

static void vm_sc_irql_errors(const struct vm_scenario *scenario, const struct vm_params *params,
			      struct vm_outcome *outcome)
{
	struct vm_thread th = { .sc = scenario->name, .t = 0 };
	struct vm_guard guard, held;
	struct vm_mutex *km, *fm, *extra;
	enum vm_result result;
	enum vm_ctx ctx;
	u64 zero = 0;

	if (vm_new(&th, "km", VM_KMUTEX, 0, &km) != VM_OK) {
		vm_fail(outcome, "could not create km");
		return;
	}
	if (vm_new(&th, "fm", VM_FAST_MUTEX, 0, &fm) != VM_OK) {
		vm_mutex_free(km);
		vm_fail(outcome, "could not create fm");
		return;
	}

	/* lock at DISPATCH_LEVEL: KMutex under a spinlock, FastMutex with preemption disabled */
	spin_lock(&vm_dispatch_lock);
	result = vm_lock(&th, km, &guard, true);
	spin_unlock(&vm_dispatch_lock);
	if (result == VM_OK)
		vm_guard_drop(&guard);
	preempt_disable();
	result = vm_lock(&th, fm, &guard, true);
	preempt_enable();
	if (result == VM_OK)
		vm_guard_drop(&guard);

	/* lock at APC_LEVEL on KMutex: APC_LEVEL is holding a fast_mutex */
	if (vm_lock(&th, fm, &held, true) == VM_OK) {
		if (vm_lock(&th, km, &guard, true) == VM_OK)
			vm_guard_drop(&guard);
		/* FastMutexGuard::drop_safe at DISPATCH_LEVEL, then at APC_LEVEL */
		preempt_disable();
		result = vm_drop_safe(&th, &held);
		preempt_enable();
		if (result != VM_OK && vm_drop_safe(&th, &held) != VM_OK)
			vm_guard_drop(&held);
	}

	/* FastMutex::new above DISPATCH_LEVEL: interrupts disabled */
	local_irq_disable();
	ctx = vm_current_ctx();
	result = vm_mutex_new(VM_FAST_MUTEX, &zero, sizeof(zero), &extra);
	local_irq_enable();
	vm_ev_call_mutex(&th, "new", "fm2", VM_FAST_MUTEX, ctx, result);
	if (result == VM_OK)
		vm_mutex_free(extra);

	/* KMutexGuard::drop_safe above DISPATCH_LEVEL, then at PASSIVE_LEVEL */
	if (vm_lock(&th, km, &held, true) == VM_OK) {
		local_irq_disable();
		ctx = vm_current_ctx();
		result = vm_guard_drop_safe(&held);
		local_irq_enable();
		vm_ev_call_mutex(&th, "drop_safe", km->label, km->kind, ctx, result);
		if (result != VM_OK && vm_drop_safe(&th, &held) != VM_OK)
			vm_guard_drop(&held);
	}
	vm_mutex_free(fm);
	vm_mutex_free(km);
}

static void vm_sc_grt_errors(const struct vm_scenario *scenario, const struct vm_params *params,
			     struct vm_outcome *outcome)
{
	struct vm_thread th = { .sc = scenario->name, .t = 0 };
	struct vm_mutex *found;
	u64 zero = 0;
	u32 small = 0;

#define VM_GRT_CALL(op, label, kind, call) \
	vm_ev_call_mutex(&th, op, label, kind, vm_current_ctx(), call)

	VM_GRT_CALL("grt_register", "counter", VM_KMUTEX,
		    vm_grt_register("counter", VM_KMUTEX, VM_TYPE_U64, &zero, sizeof(zero)));
	vm_ev_call(&th, "grt_init", vm_current_ctx(), vm_grt_init());
	vm_ev_call(&th, "grt_init", vm_current_ctx(), vm_grt_init());
	VM_GRT_CALL("grt_get", "counter", VM_KMUTEX,
		    vm_grt_get("counter", VM_KMUTEX, VM_TYPE_U64, &found));
	VM_GRT_CALL("grt_register", "counter", VM_KMUTEX,
		    vm_grt_register("counter", VM_KMUTEX, VM_TYPE_U64, &zero, sizeof(zero)));
	VM_GRT_CALL("grt_get", "missing", VM_KMUTEX,
		    vm_grt_get("missing", VM_KMUTEX, VM_TYPE_U64, &found));
	/* the wrong T (u32 for u64), then the wrong kind */
	VM_GRT_CALL("grt_get", "counter", VM_KMUTEX,
		    vm_grt_get("counter", VM_KMUTEX, VM_TYPE_U32, &found));
	VM_GRT_CALL("grt_get", "counter", VM_FAST_MUTEX,
		    vm_grt_get("counter", VM_FAST_MUTEX, VM_TYPE_U64, &found));
	VM_GRT_CALL("grt_register_checked", "counter", VM_KMUTEX,
		    vm_grt_register_checked("counter", VM_KMUTEX, VM_TYPE_U32, &small,
					    sizeof(small)));
	/* the unchecked registration replaces the mutex silently */
	VM_GRT_CALL("grt_register", "counter", VM_KMUTEX,
		    vm_grt_register("counter", VM_KMUTEX, VM_TYPE_U64, &zero, sizeof(zero)));
	VM_GRT_CALL("grt_get", "counter", VM_KMUTEX,
		    vm_grt_get("counter", VM_KMUTEX, VM_TYPE_U64, &found));
	vm_ev_call(&th, "grt_destroy", vm_current_ctx(), vm_grt_destroy());
	VM_GRT_CALL("grt_get", "counter", VM_KMUTEX,
		    vm_grt_get("counter", VM_KMUTEX, VM_TYPE_U64, &found));
	vm_ev_call(&th, "grt_destroy", vm_current_ctx(), vm_grt_destroy());
#undef VM_GRT_CALL
}

static void vm_owned_pair(const struct vm_thread *th, enum vm_kind kind, const char *owned_label,
			  const char *box_label, struct vm_outcome *outcome)
{
	struct vm_mutex *owned, *boxed;
	struct vm_guard guard;
	enum vm_ctx ctx;
	u64 value, *box;

	if (vm_new(th, owned_label, kind, 7, &owned) != VM_OK) {
		vm_fail(outcome, "could not create %s", owned_label);
		return;
	}
	if (vm_lock(th, owned, &guard, false) == VM_OK) {
		*(u64 *)vm_guard_data(&guard) += 35;
		vm_guard_drop(&guard);
	}
	ctx = vm_current_ctx();
	vm_mutex_to_owned(owned, &value);
	vm_ev_call_mutex(th, "to_owned", owned_label, kind, ctx, VM_OK);
	vm_event(VM_EV_COUNTER, th->sc, owned_label, (unsigned long long)value, 42ULL);

	if (vm_new(th, box_label, kind, 7, &boxed) != VM_OK) {
		vm_fail(outcome, "could not create %s", box_label);
		return;
	}
	if (vm_lock(th, boxed, &guard, false) == VM_OK) {
		*(u64 *)vm_guard_data(&guard) += 35;
		vm_guard_drop(&guard);
	}
	ctx = vm_current_ctx();
	box = vm_mutex_to_owned_box(boxed);
	vm_ev_call_mutex(th, "to_owned_box", box_label, kind, ctx,
			 box ? VM_OK : VM_PAGED_POOL_ALLOC_FAILED);
	if (box)
		vm_event(VM_EV_COUNTER, th->sc, box_label, (unsigned long long)*box, 42ULL);
	kfree(box);
}

static void vm_sc_to_owned(const struct vm_scenario *scenario, const struct vm_params *params,
			   struct vm_outcome *outcome)
{
	struct vm_thread th = { .sc = scenario->name, .t = 0 };

	vm_owned_pair(&th, VM_KMUTEX, "km_owned", "km_box", outcome);
	vm_owned_pair(&th, VM_FAST_MUTEX, "fm_owned", "fm_box", outcome);
}

/* drop_safe() then the guard's drop: returns what the second release did, in words. */
static const char *vm_double_release(const struct vm_thread *th, struct vm_mutex *mutex)
{
	struct vm_guard guard;
	bool usable;

	if (vm_lock(th, mutex, &guard, false) != VM_OK)
		return "could not lock";
	if (vm_drop_safe(th, &guard) != VM_OK) {
		vm_guard_drop(&guard);
		return "drop_safe refused in process context";
	}
	vm_guard_drop(&guard);
	vm_ev_call_mutex(th, "drop", mutex->label, mutex->kind, vm_current_ctx(), VM_OK);
	usable = mutex_trylock(&mutex->lock);
	if (usable)
		mutex_unlock(&mutex->lock);
	if (mutex->kind == VM_KMUTEX)
		return mutex->bad_releases == 1 && usable ?
		       "second release refused by the wrapper (not the owner), mutex still usable" :
		       "second release not refused, or the mutex is left locked";
	return usable ?
	       "second release was mutex_unlock() of an unlocked mutex: silent, mutex still usable" :
	       "second release left the mutex locked";
}

static void vm_sc_drop_safe_then_drop(const struct vm_scenario *scenario,
				      const struct vm_params *params, struct vm_outcome *outcome)
{
	struct vm_thread th = { .sc = scenario->name, .t = 0 };
	struct vm_mutex *km, *fm;
	const char *km_finding, *fm_finding;

	if (vm_new(&th, "km", VM_KMUTEX, 0, &km) != VM_OK) {
		vm_fail(outcome, "could not create km");
		return;
	}
	if (vm_new(&th, "fm", VM_FAST_MUTEX, 0, &fm) != VM_OK) {
		vm_mutex_free(km);
		vm_fail(outcome, "could not create fm");
		return;
	}
	km_finding = vm_double_release(&th, km);
	fm_finding = vm_double_release(&th, fm);
	snprintf(outcome->msg, sizeof(outcome->msg), "kmutex: %s; fast_mutex: %s%s", km_finding,
		 fm_finding, IS_ENABLED(CONFIG_DEBUG_MUTEXES) ? "" : " (no CONFIG_DEBUG_MUTEXES)");
	vm_mutex_free(fm);
	vm_mutex_free(km);
}

static void vm_sc_neg_lock_inversion(const struct vm_scenario *scenario,
				     const struct vm_params *params, struct vm_outcome *outcome)
{
	struct vm_thread th = { .sc = scenario->name, .t = 0 };
	struct completion first_done;
	struct vm_worker *workers;
	struct vm_mutex *a, *b;
	int err;

	if (vm_new(&th, "a", VM_KMUTEX, 0, &a) != VM_OK) {
		vm_fail(outcome, "could not create mutex a");
		return;
	}
	if (vm_new(&th, "b", VM_KMUTEX, 0, &b) != VM_OK) {
		vm_mutex_free(a);
		vm_fail(outcome, "could not create mutex b");
		return;
	}
	/* thread 1 takes a then b; thread 2 takes b then a once thread 1 is done (slot 0 unused) */
	workers = vm_workers(scenario->name, 3, 1, vm_lock_once);
	if (!workers) {
		vm_fail(outcome, "out of memory");
		goto out;
	}
	init_completion(&first_done);
	workers[1].first = a;
	workers[1].second = b;
	workers[1].signal_after = &first_done;
	workers[2].first = b;
	workers[2].second = a;
	workers[2].wait_before = &first_done;
	err = vm_run_workers(workers + 1, 2, true);
	if (err)
		vm_fail(outcome, "kthread_run failed: %d", err);
	kfree(workers);
out:
	vm_mutex_free(b);
	vm_mutex_free(a);
}

static void vm_sc_neg_wait_at_dispatch(const struct vm_scenario *scenario,
				       const struct vm_params *params, struct vm_outcome *outcome)
{
	struct vm_thread th = { .sc = scenario->name, .t = 0 };
	enum vm_ctx ctx;
	int count;

	/* what the crate prevents: a wait, here a sleep, at DISPATCH_LEVEL */
	preempt_disable();
	ctx = vm_current_ctx();
	msleep(1);
	count = preempt_count();
	/* the scheduler resets the count when it reports the bug: do not take it below zero */
	if (count)
		preempt_enable();
	vm_ev_call(&th, "wait", ctx, VM_OK);
	snprintf(outcome->msg, sizeof(outcome->msg),
		 "msleep(1) with preemption disabled returned; preempt count after it: %d%s", count,
		 count ? "" : " (reset by the scheduler)");
}

const struct vm_scenario vm_scenarios[] = {
	{ "kmutex_contention", false, true, vm_sc_kmutex_contention },
	{ "fast_mutex_contention", false, true, vm_sc_fast_mutex_contention },
	{ "grt_contention", false, true, vm_sc_grt_contention },
	{ "kmutex_recursion", false, false, vm_sc_kmutex_recursion },
	{ "lock_order_consistent", false, true, vm_sc_lock_order_consistent },
	{ "irql_errors", false, false, vm_sc_irql_errors },
	{ "grt_errors", false, false, vm_sc_grt_errors },
	{ "to_owned", false, false, vm_sc_to_owned },
	{ "drop_safe_then_drop", false, false, vm_sc_drop_safe_then_drop },
	{ "neg_lock_inversion", true, false, vm_sc_neg_lock_inversion },
	{ "neg_wait_at_dispatch", true, false, vm_sc_neg_wait_at_dispatch },
};

const unsigned int vm_scenario_count = ARRAY_SIZE(vm_scenarios);

void vm_run_scenario(const struct vm_scenario *scenario, const struct vm_params *params)
{
	struct vm_outcome outcome = { .outcome = "done" };
	char text[64] = "-";

	if (scenario->counted)
		snprintf(text, sizeof(text), "threads:%d,iterations:%d", params->threads,
			 params->iterations);
	vm_event(VM_EV_SCENARIO_START, scenario->name, text);
	scenario->run(scenario, params, &outcome);
	if (outcome.msg[0])
		vm_event(VM_EV_SCENARIO_MSG, scenario->name, outcome.outcome, outcome.msg);
	else
		vm_event(VM_EV_SCENARIO_END, scenario->name, outcome.outcome);
}
