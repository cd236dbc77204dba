/* SPDX-License-Identifier: GPL-2.0 */
#ifndef VM_SCENARIOS_H
#define VM_SCENARIOS_H

#include <linux/types.h>

#include "vm_catalogue.h"

struct vm_params {
	int threads;
	int iterations;
};

struct vm_outcome {
	const char *outcome;	/* "done", "skipped" or "error" */
	char msg[256];		/* empty, or why (no line breaks) */
};

/* The catalogue's rows (vm_catalogue.h, generated from drivers/scenarios.json), in its order. */
extern const struct vm_catalogue_row vm_scenarios[VM_SCENARIO_COUNT];

/* Prints scenario-start, runs scenario vm_scenarios[index], prints scenario-end. */
void vm_run_scenario(unsigned int index, const struct vm_params *params);

#endif /* VM_SCENARIOS_H */
