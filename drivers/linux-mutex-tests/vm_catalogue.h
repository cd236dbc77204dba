/* SPDX-License-Identifier: GPL-2.0 */
/* Generated from drivers/scenarios.json by `python -m vmtest.events.catalogue_gen`: do not edit. */
#ifndef VM_CATALOGUE_H
#define VM_CATALOGUE_H

#include "vm_mutex.h"

/* run parameters: default and allowed range */
#define VM_THREADS_DEFAULT 3
#define VM_THREADS_MIN 1
#define VM_THREADS_MAX 16
#define VM_ITERATIONS_DEFAULT 500
#define VM_ITERATIONS_MIN 1
#define VM_ITERATIONS_MAX 100000

/* fixed parameters of single scenarios */
#define VM_PARAM_DELAY_MS 100
#define VM_PARAM_TIMEOUT_MS 10

/* the names of mutexes and counters in the events (m=) */
#define VM_M_COUNTER "counter"
#define VM_M_KM "km"
#define VM_M_A "a"
#define VM_M_B "b"
#define VM_M_FM "fm"
#define VM_M_FM2 "fm2"
#define VM_M_MISSING "missing"
#define VM_M_KM_DROPS "km_drops"
#define VM_M_KM_BOX "km_box"
#define VM_M_KM_BOX_DROPS "km_box_drops"
#define VM_M_FM_DROPS "fm_drops"
#define VM_M_FM_BOX "fm_box"
#define VM_M_FM_BOX_DROPS "fm_box_drops"

/* the scenarios in catalogue order: name, negative, last, counted (threads and iterations), */
/* fixed params text (NULL when counted or none) */
struct vm_catalogue_row {
	const char *name;
	bool negative;
	bool last;
	bool counted;
	const char *fixed_params;
};

enum vm_scenario_index {
	VM_SC_KMUTEX_CONTENTION,
	VM_SC_FAST_MUTEX_CONTENTION,
	VM_SC_GRT_CONTENTION,
	VM_SC_KMUTEX_RECURSION,
	VM_SC_LOCK_ORDER_CONSISTENT,
	VM_SC_IRQL_ERRORS,
	VM_SC_GRT_ERRORS,
	VM_SC_TO_OWNED,
	VM_SC_DROP_SAFE_THEN_DROP,
	VM_SC_NEG_LOCK_INVERSION,
	VM_SC_NEG_WAIT_AT_DISPATCH,
	VM_SCENARIO_COUNT
};

#define VM_SCENARIO_ROWS \
	{ "kmutex_contention", false, false, true, NULL }, \
	{ "fast_mutex_contention", false, false, true, NULL }, \
	{ "grt_contention", false, false, true, NULL }, \
	{ "kmutex_recursion", false, false, false, NULL }, \
	{ "lock_order_consistent", false, false, true, NULL }, \
	{ "irql_errors", false, false, false, NULL }, \
	{ "grt_errors", false, false, false, NULL }, \
	{ "to_owned", false, false, false, NULL }, \
	{ "drop_safe_then_drop", false, true, false, NULL }, \
	{ "neg_lock_inversion", true, false, false, "delay_ms:100" }, \
	{ "neg_wait_at_dispatch", true, false, false, "timeout_ms:10" },

/* one call a scenario makes, as its events must show it: op, m (or NULL), kind (or -1), */
/* the irql it is made at, the expected result, and whether it asks for the wrong type */
struct vm_step {
	const char *op;
	const char *m;
	int kind;
	int irql;
	enum vm_result result;
	bool wrong_type;
};

#define VM_IRQL_ERRORS_STEP_COUNT 11
#define VM_IRQL_ERRORS_STEPS { \
	{ "lock", "km", VM_KMUTEX, 2, VM_IRQL_TOO_HIGH, false }, \
	{ "lock", "fm", VM_FAST_MUTEX, 2, VM_IRQL_TOO_HIGH, false }, \
	{ "lock", "fm", VM_FAST_MUTEX, 0, VM_OK, false }, \
	{ "lock", "km", VM_KMUTEX, 1, VM_OK, false }, \
	{ "drop_safe", "fm", VM_FAST_MUTEX, 2, VM_IRQL_TOO_HIGH, false }, \
	{ "drop_safe", "fm", VM_FAST_MUTEX, 1, VM_OK, false }, \
	{ "new", "fm2", VM_FAST_MUTEX, 2, VM_OK, false }, \
	{ "new", "fm2", VM_FAST_MUTEX, 3, VM_IRQL_TOO_HIGH, false }, \
	{ "lock", "km", VM_KMUTEX, 0, VM_OK, false }, \
	{ "drop_safe", "km", VM_KMUTEX, 3, VM_IRQL_TOO_HIGH, false }, \
	{ "drop_safe", "km", VM_KMUTEX, 0, VM_OK, false }, \
}

#define VM_GRT_ERRORS_STEP_COUNT 17
#define VM_GRT_ERRORS_STEPS { \
	{ "grt_get", "km", VM_KMUTEX, 0, VM_GRT_IS_NULL, false }, \
	{ "grt_register", "km", VM_KMUTEX, 0, VM_GRT_IS_NULL, false }, \
	{ "grt_init", NULL, -1, 0, VM_OK, false }, \
	{ "grt_init", NULL, -1, 0, VM_GRT_ALREADY_EXISTS, false }, \
	{ "grt_get", "km", VM_KMUTEX, 0, VM_GRT_IS_EMPTY, false }, \
	{ "grt_register", "km", VM_KMUTEX, 0, VM_OK, false }, \
	{ "grt_get", "missing", VM_KMUTEX, 0, VM_KEY_NOT_FOUND, false }, \
	{ "grt_get", "km", VM_KMUTEX, 0, VM_DOWNCAST_ERROR, true }, \
	{ "grt_get", "km", VM_FAST_MUTEX, 0, VM_DOWNCAST_ERROR, false }, \
	{ "grt_get", "km", VM_KMUTEX, 0, VM_OK, false }, \
	{ "grt_register_checked", "km", VM_KMUTEX, 0, VM_KEY_EXISTS, false }, \
	{ "grt_register", "km", VM_KMUTEX, 0, VM_OK, false }, \
	{ "grt_register", "fm", VM_FAST_MUTEX, 0, VM_OK, false }, \
	{ "grt_register_checked", "fm", VM_FAST_MUTEX, 0, VM_KEY_EXISTS, false }, \
	{ "grt_destroy", NULL, -1, 0, VM_OK, false }, \
	{ "grt_get", "km", VM_KMUTEX, 0, VM_GRT_IS_NULL, false }, \
	{ "grt_destroy", NULL, -1, 0, VM_GRT_IS_NULL, false }, \
}

#endif /* VM_CATALOGUE_H */
