// SPDX-License-Identifier: GPL-2.0
/*
 * The scenarios of drivers/scenarios.json (the catalogue; vm_catalogue.h is generated from it), each
 * printing the events the catalogue lists for it, in its order, with its names and kinds.
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

/* A catalogue step's call event: its op, m and kind, with the context seen and the result got. */
static void vm_ev_step(const struct vm_thread *th, const struct vm_step *step, enum vm_ctx ctx,
		       enum vm_result result)
{
	if (step->m)
		vm_ev_call_mutex(th, step->op, step->m, step->kind, ctx, result);
	else
		vm_ev_call(th, step->op, ctx, result);
}

/* The guards' release hook: the release event, its seq taken while the mutex is still held. */
static void vm_on_release(const struct vm_guard *guard, unsigned int depth)
{
	const struct vm_thread *th = guard->hook_arg;
	const struct vm_mutex *mutex = guard->mutex;

	vm_event(VM_EV_RELEASE, th->sc, th->t, mutex->label, vm_kind_name(mutex->kind),
		 vm_current_irql(), depth);
}

static void vm_held(const struct vm_thread *th, struct vm_mutex *mutex, struct vm_guard *guard)
{
	guard->before_release = vm_on_release;
	guard->hook_arg = th;
	vm_event(VM_EV_ACQUIRED, th->sc, th->t, mutex->label, vm_kind_name(mutex->kind),
		 vm_current_irql(), guard->depth);
}

/* A logged lock: acquire, lock(), acquired once held; a call event only when it was refused. */
static enum vm_result vm_lock(const struct vm_thread *th, struct vm_mutex *mutex,
			      struct vm_guard *guard)
{
	enum vm_ctx ctx = vm_current_ctx();
	enum vm_result result;

	vm_event(VM_EV_ACQUIRE, th->sc, th->t, mutex->label, vm_kind_name(mutex->kind),
		 vm_ctx_irql(ctx));
	result = vm_mutex_lock(mutex, guard);
	if (result == VM_OK)
		vm_held(th, mutex, guard);
	else
		vm_ev_call_mutex(th, "lock", mutex->label, mutex->kind, ctx, result);
	return result;
}

/* A lock whose IRQL contract is a catalogue step: its call event, then acquired if granted. */
static enum vm_result vm_lock_step(const struct vm_thread *th, const struct vm_step *step,
				   struct vm_mutex *mutex, struct vm_guard *guard)
{
	enum vm_ctx ctx = vm_current_ctx();
	enum vm_result result = vm_mutex_lock(mutex, guard);

	vm_ev_step(th, step, ctx, result);
	if (result == VM_OK)
		vm_held(th, mutex, guard);
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

/* new(): call op=new, then the mutex event when it was created. */
static enum vm_result vm_new(const struct vm_thread *th, const char *label, enum vm_kind kind,
			     u64 value, struct vm_mutex **out)
{
	enum vm_ctx ctx = vm_current_ctx();
	enum vm_result result = vm_mutex_new(kind, &value, sizeof(value), out);

	vm_ev_call_mutex(th, "new", label, kind, ctx, result);
	if (result != VM_OK)
		return result;
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
 * Runs worker 0 in this task and the others as kthreads, and waits for all. Returns 0, or the error
 * of the first kthread that could not be created (the ones started are still joined).
 */
static int vm_run_workers(struct vm_worker *workers, int count)
{
	struct completion start;
	struct task_struct *task;
	int i, err = 0;

	init_completion(&start);
	for (i = 1; i < count; i++) {
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
	workers[0].body(&workers[0]);
	for (i = 1; i < count; i++) {
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

	if (vm_lock(&worker->th, mutex, &guard) != VM_OK)
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

/* Takes first then second, increments both, releases in reverse order. */
static void vm_lock_pair(struct vm_worker *worker, struct vm_mutex *outer, struct vm_mutex *inner)
{
	struct vm_guard outer_guard, inner_guard;
	u64 *value;

	if (vm_lock(&worker->th, outer, &outer_guard) != VM_OK)
		return;
	if (vm_lock(&worker->th, inner, &inner_guard) == VM_OK) {
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

/* Takes first then second once; the negative control's threads, spaced by a completion. */
static void vm_lock_once(struct vm_worker *worker)
{
	if (worker->wait_before) {
		msleep(VM_PARAM_DELAY_MS);
		wait_for_completion(worker->wait_before);
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

typedef void (*vm_scenario_fn)(const char *sc, const struct vm_params *params,
			       struct vm_outcome *outcome);

static void vm_contention(const char *sc, const struct vm_params *params,
			  struct vm_outcome *outcome, enum vm_kind kind)
{
	struct vm_thread th = { .sc = sc, .t = 0 };
	struct vm_worker *workers;
	struct vm_mutex *counter;
	int i, err;

	if (vm_new(&th, VM_M_COUNTER, kind, 0, &counter) != VM_OK) {
		vm_fail(outcome, "could not create the mutex");
		return;
	}
	workers = vm_workers(sc, params->threads, params->iterations, vm_contend);
	if (!workers) {
		vm_mutex_free(counter);
		vm_fail(outcome, "out of memory");
		return;
	}
	for (i = 0; i < params->threads; i++)
		workers[i].first = counter;
	err = vm_run_workers(workers, params->threads);
	if (err)
		vm_fail(outcome, "kthread_run failed: %d", err);
	else
		vm_counter(sc, counter, (u64)params->threads * params->iterations);
	kfree(workers);
	vm_mutex_free(counter);
}

static void vm_sc_kmutex_contention(const char *sc, const struct vm_params *params,
				    struct vm_outcome *outcome)
{
	vm_contention(sc, params, outcome, VM_KMUTEX);
}

static void vm_sc_fast_mutex_contention(const char *sc, const struct vm_params *params,
					struct vm_outcome *outcome)
{
	vm_contention(sc, params, outcome, VM_FAST_MUTEX);
}

static void vm_sc_grt_contention(const char *sc, const struct vm_params *params,
				 struct vm_outcome *outcome)
{
	struct vm_thread th = { .sc = sc, .t = 0 };
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
	result = vm_grt_register(VM_M_COUNTER, VM_KMUTEX, VM_TYPE_U64, &zero, sizeof(zero));
	vm_ev_call_mutex(&th, "grt_register", VM_M_COUNTER, VM_KMUTEX, vm_current_ctx(), result);
	if (result != VM_OK) {
		vm_fail(outcome, "Grt register failed");
		goto destroy;
	}
	vm_event(VM_EV_MUTEX, sc, VM_M_COUNTER, vm_kind_name(VM_KMUTEX));
	workers = vm_workers(sc, params->threads, params->iterations, vm_grt_contend);
	if (!workers) {
		vm_fail(outcome, "out of memory");
		goto destroy;
	}
	for (i = 0; i < params->threads; i++)
		workers[i].grt_label = VM_M_COUNTER;
	err = vm_run_workers(workers, params->threads);
	if (err)
		vm_fail(outcome, "kthread_run failed: %d", err);
	else if (!workers[0].first)
		vm_fail(outcome, "thread 0 could not look the mutex up");
	else
		vm_counter(sc, workers[0].first, (u64)params->threads * params->iterations);
	kfree(workers);
destroy:
	vm_ev_call(&th, "grt_destroy", vm_current_ctx(), vm_grt_destroy());
}

static void vm_sc_kmutex_recursion(const char *sc, const struct vm_params *params,
				   struct vm_outcome *outcome)
{
	struct vm_thread th = { .sc = sc, .t = 0 };
	struct vm_guard outer, inner;
	struct vm_mutex *mutex;

	if (vm_new(&th, VM_M_KM, VM_KMUTEX, 0, &mutex) != VM_OK) {
		vm_fail(outcome, "could not create the mutex");
		return;
	}
	if (vm_lock(&th, mutex, &outer) == VM_OK) {
		if (vm_lock(&th, mutex, &inner) == VM_OK)
			vm_guard_drop(&inner);
		vm_guard_drop(&outer);
	}
	if (mutex_is_locked(&mutex->lock) || mutex->depth)
		vm_fail(outcome, "still locked after both releases (depth %u)", mutex->depth);
	vm_mutex_free(mutex);
}

/* a and b for the lock-order scenarios: two kmutexes */
static int vm_pair(const struct vm_thread *th, struct vm_mutex **a, struct vm_mutex **b,
		   struct vm_outcome *outcome)
{
	if (vm_new(th, VM_M_A, VM_KMUTEX, 0, a) != VM_OK) {
		vm_fail(outcome, "could not create mutex a");
		return -ENOMEM;
	}
	if (vm_new(th, VM_M_B, VM_KMUTEX, 0, b) != VM_OK) {
		vm_mutex_free(*a);
		vm_fail(outcome, "could not create mutex b");
		return -ENOMEM;
	}
	return 0;
}

static void vm_sc_lock_order_consistent(const char *sc, const struct vm_params *params,
					struct vm_outcome *outcome)
{
	struct vm_thread th = { .sc = sc, .t = 0 };
	struct vm_worker *workers;
	struct vm_mutex *a, *b;
	u64 expected = (u64)params->threads * params->iterations;
	int i, err;

	if (vm_pair(&th, &a, &b, outcome))
		return;
	workers = vm_workers(sc, params->threads, params->iterations, vm_lock_order);
	if (!workers) {
		vm_fail(outcome, "out of memory");
		goto out;
	}
	for (i = 0; i < params->threads; i++) {
		workers[i].first = a;
		workers[i].second = b;
	}
	err = vm_run_workers(workers, params->threads);
	if (err) {
		vm_fail(outcome, "kthread_run failed: %d", err);
	} else {
		vm_counter(sc, a, expected);
		vm_counter(sc, b, expected);
	}
	kfree(workers);
out:
	vm_mutex_free(b);
	vm_mutex_free(a);
}

/* Each call of the catalogue's irql_errors steps, in their order: steps[i] is step i + 1. */
static void vm_sc_irql_errors(const char *sc, const struct vm_params *params,
			      struct vm_outcome *outcome)
{
	static const struct vm_step steps[] = VM_IRQL_ERRORS_STEPS;
	struct vm_thread th = { .sc = sc, .t = 0 };
	struct vm_guard guard, held;
	struct vm_mutex *km, *fm, *extra;
	enum vm_result result;
	enum vm_ctx ctx;
	u64 zero = 0;

	BUILD_BUG_ON(ARRAY_SIZE(steps) != 11);
	if (vm_new(&th, VM_M_KM, VM_KMUTEX, 0, &km) != VM_OK) {
		vm_fail(outcome, "could not create km");
		return;
	}
	if (vm_new(&th, VM_M_FM, VM_FAST_MUTEX, 0, &fm) != VM_OK) {
		vm_mutex_free(km);
		vm_fail(outcome, "could not create fm");
		return;
	}

	/* 1, 2: lock at DISPATCH_LEVEL: km under a spinlock, fm with preemption disabled */
	spin_lock(&vm_dispatch_lock);
	result = vm_lock_step(&th, &steps[0], km, &guard);
	spin_unlock(&vm_dispatch_lock);
	if (result == VM_OK)
		vm_guard_drop(&guard);
	preempt_disable();
	result = vm_lock_step(&th, &steps[1], fm, &guard);
	preempt_enable();
	if (result == VM_OK)
		vm_guard_drop(&guard);

	/* 3: fm at PASSIVE_LEVEL; holding it is APC_LEVEL. 4: KMutex::lock at APC_LEVEL */
	if (vm_lock_step(&th, &steps[2], fm, &held) == VM_OK) {
		if (vm_lock_step(&th, &steps[3], km, &guard) == VM_OK)
			vm_guard_drop(&guard);
		/* 5: FastMutexGuard::drop_safe at DISPATCH_LEVEL, 6: at APC_LEVEL */
		preempt_disable();
		ctx = vm_current_ctx();
		result = vm_guard_drop_safe(&held);
		preempt_enable();
		vm_ev_step(&th, &steps[4], ctx, result);
		if (result != VM_OK) {
			ctx = vm_current_ctx();
			result = vm_guard_drop_safe(&held);
			vm_ev_step(&th, &steps[5], ctx, result);
			if (result != VM_OK)
				vm_guard_drop(&held);
		}
	}

	/* 7: FastMutex::new at DISPATCH_LEVEL, 8: above it (interrupts disabled) */
	preempt_disable();
	ctx = vm_current_ctx();
	result = vm_mutex_new(VM_FAST_MUTEX, &zero, sizeof(zero), &extra);
	preempt_enable();
	vm_ev_step(&th, &steps[6], ctx, result);
	if (result == VM_OK)
		vm_mutex_free(extra);
	local_irq_disable();
	ctx = vm_current_ctx();
	result = vm_mutex_new(VM_FAST_MUTEX, &zero, sizeof(zero), &extra);
	local_irq_enable();
	vm_ev_step(&th, &steps[7], ctx, result);
	if (result == VM_OK)
		vm_mutex_free(extra);

	/* 9: km at PASSIVE_LEVEL; 10: KMutexGuard::drop_safe above DISPATCH_LEVEL, 11: at PASSIVE */
	if (vm_lock_step(&th, &steps[8], km, &held) == VM_OK) {
		local_irq_disable();
		ctx = vm_current_ctx();
		result = vm_guard_drop_safe(&held);
		local_irq_enable();
		vm_ev_step(&th, &steps[9], ctx, result);
		if (result != VM_OK) {
			ctx = vm_current_ctx();
			result = vm_guard_drop_safe(&held);
			vm_ev_step(&th, &steps[10], ctx, result);
			if (result != VM_OK)
				vm_guard_drop(&held);
		}
	}
	vm_mutex_free(fm);
	vm_mutex_free(km);
}

/* The catalogue's grt_errors steps, one Grt call each, in order. */
static void vm_sc_grt_errors(const char *sc, const struct vm_params *params,
			     struct vm_outcome *outcome)
{
	static const struct vm_step steps[] = VM_GRT_ERRORS_STEPS;
	struct vm_thread th = { .sc = sc, .t = 0 };
	struct vm_mutex *found;
	enum vm_result result;
	enum vm_type type;
	enum vm_ctx ctx;
	unsigned int i;
	u32 zero = 0;

	for (i = 0; i < ARRAY_SIZE(steps); i++) {
		/* registered as u32; a wrong-type step asks for a u64 */
		type = steps[i].wrong_type ? VM_TYPE_U64 : VM_TYPE_U32;
		ctx = vm_current_ctx();
		if (!strcmp(steps[i].op, "grt_init"))
			result = vm_grt_init();
		else if (!strcmp(steps[i].op, "grt_destroy"))
			result = vm_grt_destroy();
		else if (!strcmp(steps[i].op, "grt_register"))
			result = vm_grt_register(steps[i].m, steps[i].kind, type, &zero, sizeof(zero));
		else if (!strcmp(steps[i].op, "grt_register_checked"))
			result = vm_grt_register_checked(steps[i].m, steps[i].kind, type, &zero,
							 sizeof(zero));
		else
			result = vm_grt_get(steps[i].m, steps[i].kind, type, &found);
		vm_ev_step(&th, &steps[i], ctx, result);
	}
}

/*
 * One mutex made with 7, locked and 35 added, then taken out with to_owned (boxed: to_owned_box):
 * the value must be 42, and dropped once by its new owner (here: the copy or the box let go).
 */
static void vm_owned(const struct vm_thread *th, const char *label, const char *drops_label,
		     enum vm_kind kind, bool boxed, struct vm_outcome *outcome)
{
	struct vm_mutex *mutex;
	struct vm_guard guard;
	enum vm_result result = VM_OK;
	enum vm_ctx ctx;
	u64 value = 0, *box;
	unsigned long long drops = 0;

	if (vm_new(th, label, kind, 7, &mutex) != VM_OK) {
		vm_fail(outcome, "could not create %s", label);
		return;
	}
	if (vm_lock(th, mutex, &guard) == VM_OK) {
		*(u64 *)vm_guard_data(&guard) += 35;
		vm_guard_drop(&guard);
	}
	ctx = vm_current_ctx();
	if (boxed) {
		box = vm_mutex_to_owned_box(mutex);
		if (box) {
			value = *box;
			kfree(box);
			drops++;
		} else {
			result = VM_PAGED_POOL_ALLOC_FAILED;
		}
	} else {
		vm_mutex_to_owned(mutex, &value);
		drops++;	/* the copy leaves scope: u64 has no destructor to run twice */
	}
	vm_ev_call_mutex(th, boxed ? "to_owned_box" : "to_owned", label, kind, ctx, result);
	if (result != VM_OK)
		return;
	vm_event(VM_EV_COUNTER, th->sc, label, (unsigned long long)value, 42ULL);
	vm_event(VM_EV_COUNTER, th->sc, drops_label, drops, 1ULL);
}

static void vm_sc_to_owned(const char *sc, const struct vm_params *params,
			   struct vm_outcome *outcome)
{
	struct vm_thread th = { .sc = sc, .t = 0 };

	vm_owned(&th, VM_M_KM, VM_M_KM_DROPS, VM_KMUTEX, false, outcome);
	vm_owned(&th, VM_M_KM_BOX, VM_M_KM_BOX_DROPS, VM_KMUTEX, true, outcome);
	vm_owned(&th, VM_M_FM, VM_M_FM_DROPS, VM_FAST_MUTEX, false, outcome);
	vm_owned(&th, VM_M_FM_BOX, VM_M_FM_BOX_DROPS, VM_FAST_MUTEX, true, outcome);
}

/*
 * One mutex: lock, drop_safe() (the release), then the guard's drop (a second release, reported
 * as call op=drop: the task no longer holds the mutex, so it is no release event). Returns what
 * the second release did, in words.
 */
static const char *vm_double_release(const struct vm_thread *th, const char *label,
				     enum vm_kind kind, struct vm_outcome *outcome)
{
	struct vm_mutex *mutex;
	struct vm_guard guard;
	const char *finding;
	bool usable;

	if (vm_new(th, label, kind, 0, &mutex) != VM_OK) {
		vm_fail(outcome, "could not create %s", label);
		return "not created";
	}
	if (vm_lock(th, mutex, &guard) != VM_OK) {
		vm_fail(outcome, "could not lock %s", label);
		vm_mutex_free(mutex);
		return "could not lock";
	}
	if (vm_drop_safe(th, &guard) != VM_OK) {
		vm_guard_drop(&guard);
		vm_mutex_free(mutex);
		return "drop_safe refused";
	}
	vm_guard_drop(&guard);
	vm_ev_call_mutex(th, "drop", label, kind, vm_current_ctx(), VM_OK);
	usable = mutex_trylock(&mutex->lock);
	if (usable)
		mutex_unlock(&mutex->lock);
	if (kind == VM_KMUTEX)
		finding = mutex->bad_releases == 1 && usable ?
			  "second release refused by the wrapper (not the owner), mutex still usable" :
			  "second release not refused, or the mutex is left locked";
	else
		finding = usable ?
			  "second release was mutex_unlock() of an unlocked mutex: silent, mutex still usable" :
			  "second release left the mutex locked";
	vm_mutex_free(mutex);
	return finding;
}

static void vm_sc_drop_safe_then_drop(const char *sc, const struct vm_params *params,
				      struct vm_outcome *outcome)
{
	struct vm_thread th = { .sc = sc, .t = 0 };
	const char *fm_finding, *km_finding;

	fm_finding = vm_double_release(&th, VM_M_FM, VM_FAST_MUTEX, outcome);
	km_finding = vm_double_release(&th, VM_M_KM, VM_KMUTEX, outcome);
	if (!strcmp(outcome->outcome, "done"))
		snprintf(outcome->msg, sizeof(outcome->msg), "fast_mutex: %s; kmutex: %s%s",
			 fm_finding, km_finding,
			 IS_ENABLED(CONFIG_DEBUG_MUTEXES) ? "" : " (no CONFIG_DEBUG_MUTEXES)");
}

static void vm_sc_neg_lock_inversion(const char *sc, const struct vm_params *params,
				     struct vm_outcome *outcome)
{
	struct vm_thread th = { .sc = sc, .t = 0 };
	struct completion first_done;
	struct vm_worker *workers;
	struct vm_mutex *a, *b;
	int err;

	if (vm_pair(&th, &a, &b, outcome))
		return;
	/* thread 0 takes a then b; thread 1 takes b then a, delay_ms later and once thread 0 is done */
	workers = vm_workers(sc, 2, 1, vm_lock_once);
	if (!workers) {
		vm_fail(outcome, "out of memory");
		goto out;
	}
	init_completion(&first_done);
	workers[0].first = a;
	workers[0].second = b;
	workers[0].signal_after = &first_done;
	workers[1].first = b;
	workers[1].second = a;
	workers[1].wait_before = &first_done;
	err = vm_run_workers(workers, 2);
	if (err)
		vm_fail(outcome, "kthread_run failed: %d", err);
	kfree(workers);
out:
	vm_mutex_free(b);
	vm_mutex_free(a);
}

static void vm_sc_neg_wait_at_dispatch(const char *sc, const struct vm_params *params,
				       struct vm_outcome *outcome)
{
	struct vm_thread th = { .sc = sc, .t = 0 };
	enum vm_ctx ctx;
	int count;

	/* what the crate prevents: a wait, here a sleep, at DISPATCH_LEVEL */
	preempt_disable();
	ctx = vm_current_ctx();
	msleep(VM_PARAM_TIMEOUT_MS);
	count = preempt_count();
	/* the scheduler resets the count when it reports the bug: do not take it below zero */
	if (count)
		preempt_enable();
	vm_ev_call(&th, "wait", ctx, VM_OK);
	snprintf(outcome->msg, sizeof(outcome->msg),
		 "msleep(%d) with preemption disabled returned; preempt count after it: %d%s",
		 VM_PARAM_TIMEOUT_MS, count, count ? "" : " (reset by the scheduler)");
}

const struct vm_catalogue_row vm_scenarios[VM_SCENARIO_COUNT] = { VM_SCENARIO_ROWS };

/* Every catalogue row has its function here (indices of vm_catalogue.h; a unit test checks each). */
static const vm_scenario_fn vm_scenario_fns[] = {
	[VM_SC_KMUTEX_CONTENTION] = vm_sc_kmutex_contention,
	[VM_SC_FAST_MUTEX_CONTENTION] = vm_sc_fast_mutex_contention,
	[VM_SC_GRT_CONTENTION] = vm_sc_grt_contention,
	[VM_SC_KMUTEX_RECURSION] = vm_sc_kmutex_recursion,
	[VM_SC_LOCK_ORDER_CONSISTENT] = vm_sc_lock_order_consistent,
	[VM_SC_IRQL_ERRORS] = vm_sc_irql_errors,
	[VM_SC_GRT_ERRORS] = vm_sc_grt_errors,
	[VM_SC_TO_OWNED] = vm_sc_to_owned,
	[VM_SC_DROP_SAFE_THEN_DROP] = vm_sc_drop_safe_then_drop,
	[VM_SC_NEG_LOCK_INVERSION] = vm_sc_neg_lock_inversion,
	[VM_SC_NEG_WAIT_AT_DISPATCH] = vm_sc_neg_wait_at_dispatch,
};

void vm_run_scenario(unsigned int index, const struct vm_params *params)
{
	const struct vm_catalogue_row *scenario = &vm_scenarios[index];
	struct vm_outcome outcome = { .outcome = "done" };
	char text[64] = "-";

	BUILD_BUG_ON(ARRAY_SIZE(vm_scenario_fns) != VM_SCENARIO_COUNT);
	if (scenario->counted)
		snprintf(text, sizeof(text), "threads:%d,iterations:%d", params->threads,
			 params->iterations);
	else if (scenario->fixed_params)
		strscpy(text, scenario->fixed_params, sizeof(text));
	vm_event(VM_EV_SCENARIO_START, scenario->name, text);
	vm_scenario_fns[index](scenario->name, params, &outcome);
	if (outcome.msg[0])
		vm_event(VM_EV_SCENARIO_MSG, scenario->name, outcome.outcome, outcome.msg);
	else
		vm_event(VM_EV_SCENARIO_END, scenario->name, outcome.outcome);
}
