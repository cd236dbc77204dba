/* SPDX-License-Identifier: GPL-2.0 */
#ifndef VM_SCENARIOS_H
#define VM_SCENARIOS_H

#include <linux/types.h>

#define VM_MAX_THREADS 16
#define VM_MAX_ITERATIONS 100000

struct vm_params {
	int threads;
	int iterations;
};

struct vm_outcome {
	const char *outcome;	/* "done", "skipped" or "error" */
	char msg[256];		/* empty, or why (no line breaks) */
};

struct vm_scenario {
	const char *name;
	bool negative;		/* a negative control: runs only when named */
	bool counted;		/* uses threads and iterations */
	void (*run)(const struct vm_scenario *scenario, const struct vm_params *params,
		    struct vm_outcome *outcome);
};

extern const struct vm_scenario vm_scenarios[];
extern const unsigned int vm_scenario_count;

/* Prints scenario-start, runs the scenario, prints scenario-end. */
void vm_run_scenario(const struct vm_scenario *scenario, const struct vm_params *params);

#endif /* VM_SCENARIOS_H */
