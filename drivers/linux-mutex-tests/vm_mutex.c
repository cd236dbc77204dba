// SPDX-License-Identifier: GPL-2.0
/*
 * The checked mutex wrapper: KMutex and FastMutex of wdk-mutex, mirrored on struct mutex.
 *
 * Linux has no IRQL. The wrapper judges the context instead (vm_current_ctx()): interrupts
 * off is "above DISPATCH_LEVEL", preemption off (a spinlock, preempt_disable(), softirq) is
 * DISPATCH_LEVEL, a task holding a fast_mutex is APC_LEVEL (as ExAcquireFastMutex raises to
 * APC_LEVEL on Windows), anything else PASSIVE_LEVEL. These checks are what turns a
 * mutex_lock() in atomic context into an error: without CONFIG_DEBUG_ATOMIC_SLEEP (the Debian
 * kernel has none) an uncontended mutex_lock() there passes without a word.
 */
#include <linux/hardirq.h>
#include <linux/irqflags.h>
#include <linux/kernel.h>
#include <linux/overflow.h>
#include <linux/preempt.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>

#include "vm_mutex.h"

static const char *const vm_result_names[VM_RESULT_COUNT] = {
	[VM_OK] = "Ok",
	[VM_IRQL_TOO_HIGH] = "IrqlTooHigh",
	[VM_IRQL_NOT_APC_LEVEL] = "IrqlNotAPCLevel",
	[VM_PAGED_POOL_ALLOC_FAILED] = "PagedPoolAllocFailed",
	[VM_GRT_ALREADY_EXISTS] = "GrtAlreadyExists",
	[VM_GRT_IS_NULL] = "GrtIsNull",
	[VM_GRT_IS_EMPTY] = "GrtIsEmpty",
	[VM_KEY_NOT_FOUND] = "KeyNotFound",
	[VM_KEY_EXISTS] = "KeyExists",
	[VM_DOWNCAST_ERROR] = "DowncastError",
};

static const char *const vm_kind_names[] = {
	[VM_KMUTEX] = "kmutex",
	[VM_FAST_MUTEX] = "fast_mutex",
};

static const char *const vm_ctx_names[] = {
	[VM_CTX_SLEEPABLE] = "sleepable",
	[VM_CTX_MUTEX_HELD] = "fast_mutex_held",
	[VM_CTX_PREEMPT_OFF] = "preempt_off",
	[VM_CTX_IRQS_OFF] = "irqs_off",
};

const char *vm_result_name(enum vm_result result)
{
	if ((unsigned int)result >= ARRAY_SIZE(vm_result_names))
		return "Unknown";
	return vm_result_names[result];
}

const char *vm_kind_name(enum vm_kind kind)
{
	if ((unsigned int)kind >= ARRAY_SIZE(vm_kind_names))
		return "unknown";
	return vm_kind_names[kind];
}

const char *vm_ctx_name(enum vm_ctx ctx)
{
	if ((unsigned int)ctx >= ARRAY_SIZE(vm_ctx_names))
		return "unknown";
	return vm_ctx_names[ctx];
}

/*
 * APC_LEVEL emulation: how many fast_mutexes each task holds. A small table, because a task has no
 * field of ours; the scenarios run at most a few dozen tasks at once.
 */
#define VM_APC_SLOTS 64

struct vm_apc_slot {
	struct task_struct *task;
	unsigned int held;
};

static struct vm_apc_slot vm_apc_slots[VM_APC_SLOTS];
static DEFINE_SPINLOCK(vm_apc_lock);

static bool vm_apc_held(void)
{
	bool held = false;
	int i;

	spin_lock(&vm_apc_lock);
	for (i = 0; i < VM_APC_SLOTS; i++) {
		if (vm_apc_slots[i].task == current) {
			held = vm_apc_slots[i].held > 0;
			break;
		}
	}
	spin_unlock(&vm_apc_lock);
	return held;
}

static void vm_apc_adjust(int delta)
{
	struct vm_apc_slot *slot = NULL, *unused = NULL;
	int i;

	spin_lock(&vm_apc_lock);
	for (i = 0; i < VM_APC_SLOTS; i++) {
		if (vm_apc_slots[i].task == current) {
			slot = &vm_apc_slots[i];
			break;
		}
		if (!vm_apc_slots[i].task && !unused)
			unused = &vm_apc_slots[i];
	}
	if (!slot && delta > 0 && unused) {
		slot = unused;
		slot->task = current;
		slot->held = 0;
	}
	if (slot) {
		if (delta > 0 || slot->held > 0)
			slot->held += delta;
		if (!slot->held)
			slot->task = NULL;
	}
	spin_unlock(&vm_apc_lock);
	WARN_ONCE(!slot && delta > 0, "vmtest_mutex_tests: APC_LEVEL table full\n");
}

enum vm_ctx vm_current_ctx(void)
{
	if (irqs_disabled() || in_hardirq() || in_nmi())
		return VM_CTX_IRQS_OFF;
	if (!preemptible())
		return VM_CTX_PREEMPT_OFF;
	return vm_apc_held() ? VM_CTX_MUTEX_HELD : VM_CTX_SLEEPABLE;
}

int vm_ctx_irql(enum vm_ctx ctx)
{
	switch (ctx) {
	case VM_CTX_SLEEPABLE:
		return VM_PASSIVE_LEVEL;
	case VM_CTX_MUTEX_HELD:
		return VM_APC_LEVEL;
	case VM_CTX_PREEMPT_OFF:
		return VM_DISPATCH_LEVEL;
	default:
		/* PROTOCOL.md: interrupts off is "above DISPATCH_LEVEL", reported as 3 (a device IRQL) */
		return VM_DIRQL_LEVEL;
	}
}

int vm_current_irql(void)
{
	return vm_ctx_irql(vm_current_ctx());
}

static gfp_t vm_gfp(enum vm_ctx ctx)
{
	return ctx >= VM_CTX_PREEMPT_OFF ? GFP_ATOMIC : GFP_KERNEL;
}

enum vm_result vm_mutex_new(enum vm_kind kind, const void *data, size_t size,
			    struct vm_mutex **out)
{
	enum vm_ctx ctx = vm_current_ctx();
	struct vm_mutex *mutex;

	/* FastMutex::new: IrqlTooHigh above DISPATCH_LEVEL; KMutex::new: any IRQL */
	if (kind == VM_FAST_MUTEX && ctx == VM_CTX_IRQS_OFF)
		return VM_IRQL_TOO_HIGH;
	mutex = kzalloc(struct_size(mutex, data, DIV_ROUND_UP(size, sizeof(u64))), vm_gfp(ctx));
	if (!mutex)
		return VM_PAGED_POOL_ALLOC_FAILED;
	mutex_init(&mutex->lock);
	mutex->kind = kind;
	mutex->size = size;
	memcpy(mutex->data, data, size);
	*out = mutex;
	return VM_OK;
}

void vm_mutex_free(struct vm_mutex *mutex)
{
	if (!mutex)
		return;
	mutex_destroy(&mutex->lock);
	kfree(mutex);
}

enum vm_result vm_mutex_lock(struct vm_mutex *mutex, struct vm_guard *guard)
{
	/* KMutex::lock and FastMutex::lock: IrqlTooHigh above APC_LEVEL, and no sleep */
	if (vm_current_irql() > VM_APC_LEVEL)
		return VM_IRQL_TOO_HIGH;
	if (mutex->kind == VM_KMUTEX && READ_ONCE(mutex->owner) == current) {
		/* a KMUTEX is recursive for its owner; only the owner can see itself here */
		mutex->depth++;
	} else {
		/* a FAST_MUTEX is not: its owner deadlocks here, as on Windows */
		mutex_lock(&mutex->lock);
		WRITE_ONCE(mutex->owner, current);
		mutex->depth = 1;
		if (mutex->kind == VM_FAST_MUTEX)
			vm_apc_adjust(1);
	}
	*guard = (struct vm_guard){ .mutex = mutex, .depth = mutex->depth };
	return VM_OK;
}

static void vm_release(struct vm_guard *guard)
{
	struct vm_mutex *mutex = guard->mutex;

	if (READ_ONCE(mutex->owner) != current) {
		if (mutex->kind == VM_KMUTEX) {
			/* KeReleaseMutex checks the owner; the emulation does too and refuses */
			mutex->bad_releases++;
			pr_err("vmtest_mutex_tests: kmutex %s released by a task that does not own it: refused\n",
			       mutex->label ?: "-");
			return;
		}
		/*
		 * ExReleaseFastMutex does not check the owner, and mutex_unlock() only does with
		 * CONFIG_DEBUG_MUTEXES: release whatever happens.
		 */
		mutex_unlock(&mutex->lock);
		return;
	}
	if (guard->before_release)
		guard->before_release(guard, mutex->depth);
	if (--mutex->depth > 0)
		return;
	WRITE_ONCE(mutex->owner, NULL);
	if (mutex->kind == VM_FAST_MUTEX)
		vm_apc_adjust(-1);
	mutex_unlock(&mutex->lock);
}

void vm_guard_drop(struct vm_guard *guard)
{
	vm_release(guard);
}

enum vm_result vm_guard_drop_safe(struct vm_guard *guard)
{
	enum vm_ctx ctx = vm_current_ctx();

	/* KMutexGuard: above DISPATCH_LEVEL; FastMutexGuard: anything but APC_LEVEL */
	if (guard->mutex->kind == VM_KMUTEX ? ctx == VM_CTX_IRQS_OFF :
	    vm_ctx_irql(ctx) != VM_APC_LEVEL)
		return VM_IRQL_TOO_HIGH;
	vm_release(guard);
	return VM_OK;
}

void vm_mutex_to_owned(struct vm_mutex *mutex, void *out)
{
	memcpy(out, mutex->data, mutex->size);
	vm_mutex_free(mutex);
}

void *vm_mutex_to_owned_box(struct vm_mutex *mutex)
{
	void *box = kmemdup(mutex->data, mutex->size, vm_gfp(vm_current_ctx()));

	vm_mutex_free(mutex);
	return box;
}

/* Grt: a fixed table behind a spinlock (the crate: a BTreeMap behind an AtomicPtr). */
#define VM_GRT_SLOTS 16

struct vm_grt_entry {
	const char *label;
	struct vm_mutex *mutex;
	enum vm_type type;
};

struct vm_grt {
	unsigned int count;
	struct vm_grt_entry entries[VM_GRT_SLOTS];
};

static struct vm_grt *vm_grt;
static DEFINE_SPINLOCK(vm_grt_lock);

enum vm_result vm_grt_init(void)
{
	struct vm_grt *grt;

	if (READ_ONCE(vm_grt))
		return VM_GRT_ALREADY_EXISTS;
	grt = kzalloc(sizeof(*grt), vm_gfp(vm_current_ctx()));
	if (!grt)
		return VM_PAGED_POOL_ALLOC_FAILED;
	spin_lock(&vm_grt_lock);
	if (vm_grt) {
		spin_unlock(&vm_grt_lock);
		kfree(grt);
		return VM_GRT_ALREADY_EXISTS;
	}
	WRITE_ONCE(vm_grt, grt);
	spin_unlock(&vm_grt_lock);
	return VM_OK;
}

static enum vm_result vm_grt_insert(const char *label, enum vm_kind kind, enum vm_type type,
				    const void *data, size_t size, bool checked)
{
	struct vm_grt_entry *slot = NULL, *unused = NULL;
	struct vm_mutex *mutex, *replaced;
	enum vm_result result;
	int i;

	if (!READ_ONCE(vm_grt))
		return VM_GRT_IS_NULL;
	/* as in the crate, the mutex is made first, then the label checked */
	result = vm_mutex_new(kind, data, size, &mutex);
	if (result != VM_OK)
		return result;
	mutex->label = label;
	spin_lock(&vm_grt_lock);
	if (!vm_grt) {
		result = VM_GRT_IS_NULL;
		goto refuse;
	}
	for (i = 0; i < VM_GRT_SLOTS; i++) {
		struct vm_grt_entry *entry = &vm_grt->entries[i];

		if (entry->label && !strcmp(entry->label, label)) {
			slot = entry;
			break;
		}
		if (!entry->label && !unused)
			unused = entry;
	}
	if (slot && checked) {
		result = VM_KEY_EXISTS;
		goto refuse;
	}
	if (!slot) {
		if (!unused) {
			/* the table is full: the counterpart of the map's allocation failing */
			result = VM_PAGED_POOL_ALLOC_FAILED;
			goto refuse;
		}
		slot = unused;
		slot->label = label;
		vm_grt->count++;
	}
	/* an existing label is replaced silently, its mutex freed even if held (as in the crate) */
	replaced = slot->mutex;
	slot->mutex = mutex;
	slot->type = type;
	spin_unlock(&vm_grt_lock);
	vm_mutex_free(replaced);
	return VM_OK;

refuse:
	spin_unlock(&vm_grt_lock);
	vm_mutex_free(mutex);
	return result;
}

enum vm_result vm_grt_register(const char *label, enum vm_kind kind, enum vm_type type,
			       const void *data, size_t size)
{
	return vm_grt_insert(label, kind, type, data, size, false);
}

enum vm_result vm_grt_register_checked(const char *label, enum vm_kind kind, enum vm_type type,
				       const void *data, size_t size)
{
	return vm_grt_insert(label, kind, type, data, size, true);
}

enum vm_result vm_grt_get(const char *label, enum vm_kind kind, enum vm_type type,
			  struct vm_mutex **out)
{
	enum vm_result result = VM_KEY_NOT_FOUND;
	int i;

	spin_lock(&vm_grt_lock);
	if (!vm_grt) {
		result = VM_GRT_IS_NULL;
	} else if (!vm_grt->count) {
		result = VM_GRT_IS_EMPTY;
	} else {
		for (i = 0; i < VM_GRT_SLOTS; i++) {
			struct vm_grt_entry *entry = &vm_grt->entries[i];

			if (!entry->label || strcmp(entry->label, label))
				continue;
			if (entry->mutex->kind != kind || entry->type != type) {
				result = VM_DOWNCAST_ERROR;
			} else {
				*out = entry->mutex;
				result = VM_OK;
			}
			break;
		}
	}
	spin_unlock(&vm_grt_lock);
	return result;
}

enum vm_result vm_grt_destroy(void)
{
	struct vm_grt *grt;
	int i;

	spin_lock(&vm_grt_lock);
	grt = vm_grt;
	WRITE_ONCE(vm_grt, NULL);
	spin_unlock(&vm_grt_lock);
	if (!grt)
		return VM_GRT_IS_NULL;
	for (i = 0; i < VM_GRT_SLOTS; i++)
		vm_mutex_free(grt->entries[i].mutex);
	kfree(grt);
	return VM_OK;
}
