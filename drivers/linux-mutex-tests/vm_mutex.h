/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A checked wrapper around struct mutex that mirrors the contract of the Rust crate wdk-mutex
 * (KMutex, FastMutex and their guards, Grt): the same operations, the same error names, and the
 * same "IRQL" rules, translated to Linux contexts (see README.md).
 */
#ifndef VM_MUTEX_H
#define VM_MUTEX_H

#include <linux/mutex.h>
#include <linux/sched.h>
#include <linux/types.h>

/* The context numbers of PROTOCOL.md, named after the Windows IRQLs they stand for. */
#define VM_PASSIVE_LEVEL	0	/* sleepable process context */
#define VM_APC_LEVEL		1	/* sleepable, but holding a fast_mutex (emulated) */
#define VM_DISPATCH_LEVEL	2	/* atomic: preemption disabled */
#define VM_DIRQL_LEVEL		3	/* interrupts disabled: above DISPATCH_LEVEL */

/* How the current context was judged: finer than the number, printed as ctx= on call events. */
enum vm_ctx {
	VM_CTX_SLEEPABLE,	/* PASSIVE_LEVEL */
	VM_CTX_MUTEX_HELD,	/* APC_LEVEL: the task holds a fast_mutex */
	VM_CTX_PREEMPT_OFF,	/* DISPATCH_LEVEL: preempt_disable(), a spinlock, softirq */
	VM_CTX_IRQS_OFF,	/* "above DISPATCH_LEVEL": interrupts disabled, hardirq, NMI */
};

/*
 * DriverMutexError and GrtError of wdk-mutex, flattened: vm_result_name() prints each exactly as
 * the Rust variant is spelled (GrtError::DriverMutexError(e) prints as e's name).
 */
enum vm_result {
	VM_OK,
	VM_IRQL_TOO_HIGH,
	VM_IRQL_NOT_APC_LEVEL,
	VM_PAGED_POOL_ALLOC_FAILED,
	VM_GRT_ALREADY_EXISTS,
	VM_GRT_IS_NULL,
	VM_GRT_IS_EMPTY,
	VM_KEY_NOT_FOUND,
	VM_KEY_EXISTS,
	VM_DOWNCAST_ERROR,
	VM_RESULT_COUNT
};

/* KMutex (recursive for its owner) and FastMutex (not recursive, "raises" to APC_LEVEL). */
enum vm_kind {
	VM_KMUTEX,
	VM_FAST_MUTEX,
};

/* The data type a mutex protects, standing in for Rust's TypeId in Grt's downcast. */
enum vm_type {
	VM_TYPE_U64,
	VM_TYPE_U32,
};

/* KMutex<T> / FastMutex<T>: the lock and its data in one allocation. */
struct vm_mutex {
	struct mutex lock;
	enum vm_kind kind;
	struct task_struct *owner;	/* the holder, written only by the holder */
	unsigned int depth;		/* recursion depth of the holder; 0 when free */
	unsigned int bad_releases;	/* kmutex releases refused: the caller was not the owner */
	const char *label;		/* the scenario's name for it (m=), not in the crate */
	size_t size;
	u64 data[];			/* T (u64-aligned) */
};

struct vm_guard;
typedef void (*vm_release_hook)(const struct vm_guard *guard, unsigned int depth);

/* KMutexGuard / FastMutexGuard: what lock() returns; data is reached through vm_guard_data(). */
struct vm_guard {
	struct vm_mutex *mutex;
	unsigned int depth;		/* the holder's depth right after this acquisition */
	vm_release_hook before_release;	/* called while still held, just before the release */
	const void *hook_arg;
};

const char *vm_result_name(enum vm_result result);
const char *vm_kind_name(enum vm_kind kind);
const char *vm_ctx_name(enum vm_ctx ctx);
enum vm_ctx vm_current_ctx(void);
int vm_ctx_irql(enum vm_ctx ctx);
int vm_current_irql(void);

/* new(): KMutex at any context; FastMutex IrqlTooHigh above DISPATCH_LEVEL. */
enum vm_result vm_mutex_new(enum vm_kind kind, const void *data, size_t size,
			    struct vm_mutex **out);
/* Drop for KMutex<T> / FastMutex<T>. */
void vm_mutex_free(struct vm_mutex *mutex);
/* lock(): IrqlTooHigh above APC_LEVEL, otherwise waits (uninterruptibly, no timeout). */
enum vm_result vm_mutex_lock(struct vm_mutex *mutex, struct vm_guard *guard);
/* to_owned(): copies T out and frees the mutex. */
void vm_mutex_to_owned(struct vm_mutex *mutex, void *out);
/* to_owned_box(): T in a new allocation (kfree it), the mutex freed; NULL if allocation failed. */
void *vm_mutex_to_owned_box(struct vm_mutex *mutex);

static inline void *vm_mutex_data(struct vm_mutex *mutex)
{
	return mutex->data;
}

static inline void *vm_guard_data(struct vm_guard *guard)
{
	return guard->mutex->data;
}

/* Drop for the guard: releases with no context check, like the crate's guards. */
void vm_guard_drop(struct vm_guard *guard);
/*
 * drop_safe(): KMutex IrqlTooHigh above DISPATCH_LEVEL, FastMutex IrqlTooHigh unless at exactly
 * APC_LEVEL; otherwise releases. Like the crate's &mut self method it leaves the guard usable, so
 * a later vm_guard_drop() releases a second time.
 */
enum vm_result vm_guard_drop_safe(struct vm_guard *guard);

/* Grt: a global registry of labelled mutexes. Labels must be static strings. */
enum vm_result vm_grt_init(void);
enum vm_result vm_grt_register(const char *label, enum vm_kind kind, enum vm_type type,
			       const void *data, size_t size);
enum vm_result vm_grt_register_checked(const char *label, enum vm_kind kind, enum vm_type type,
				       const void *data, size_t size);
enum vm_result vm_grt_get(const char *label, enum vm_kind kind, enum vm_type type,
			  struct vm_mutex **out);
enum vm_result vm_grt_destroy(void);

#endif /* VM_MUTEX_H */
