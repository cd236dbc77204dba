# ruff: noqa: E501
"""The scenario catalogue as shipped in the package. Generated from drivers/scenarios.json by `python -m vmtest.events.catalogue_gen`: do not edit."""

__all__ = ["CATALOGUE_JSON"]

CATALOGUE_JSON = """{
  "about": "The wdk-mutex scenario catalogue: the one description of every scenario both test drivers run and of the events each must print (drivers/PROTOCOL.md, Scenarios). After editing, run `python -m vmtest.events.catalogue_gen` to regenerate linux-mutex-tests/vm_catalogue.h, wdk-mutex-tests/src/catalogue.rs and vmtest/events/catalogue_data.py; a unit test fails while they are stale. Values: a number or a name; `$threads`, `$iterations`, `$threads*iterations` are the run's parameters, `$t` the thread index inside each_thread. A stream item is an event (ev plus its fields), {`each_thread`: [...]} (once per thread t=0..threads-1), or {`repeat`: `$iterations`, `do`: [...]}. An event without t belongs to thread 0's stream.",
  "parameters": {
    "threads": {"default": 3, "min": 1, "max": 16, "what": "threads of the contention and lock-order scenarios (thread 0 runs the scenario)"},
    "iterations": {"default": 500, "min": 1, "max": 100000, "what": "lock iterations per thread"}
  },
  "scenarios": [
    {
      "name": "kmutex_contention",
      "what": "N threads x M increments of a counter under a KMutex",
      "expects": "exclusion; counter = N x M",
      "params": [["threads", "$threads"], ["iterations", "$iterations"]],
      "threads": "$threads",
      "stream": [
        {"ev": "call", "t": 0, "op": "new", "m": "counter", "k": "kmutex", "irql": 0, "r": "Ok"},
        {"ev": "mutex", "m": "counter", "k": "kmutex"},
        {"each_thread": [
          {"repeat": "$iterations", "do": [
            {"ev": "acquire", "t": "$t", "m": "counter", "k": "kmutex", "irql": 0},
            {"ev": "acquired", "t": "$t", "m": "counter", "k": "kmutex", "irql": 0, "depth": 1},
            {"ev": "release", "t": "$t", "m": "counter", "k": "kmutex", "irql": 0, "depth": 1}
          ]},
          {"ev": "thread-end", "t": "$t", "iterations": "$iterations"}
        ]},
        {"ev": "counter", "m": "counter", "value": "$threads*iterations", "expected": "$threads*iterations"}
      ]
    },
    {
      "name": "fast_mutex_contention",
      "what": "the same under a FastMutex (held at APC_LEVEL, irql 1)",
      "expects": "exclusion; counter = N x M",
      "params": [["threads", "$threads"], ["iterations", "$iterations"]],
      "threads": "$threads",
      "stream": [
        {"ev": "call", "t": 0, "op": "new", "m": "counter", "k": "fast_mutex", "irql": 0, "r": "Ok"},
        {"ev": "mutex", "m": "counter", "k": "fast_mutex"},
        {"each_thread": [
          {"repeat": "$iterations", "do": [
            {"ev": "acquire", "t": "$t", "m": "counter", "k": "fast_mutex", "irql": 0},
            {"ev": "acquired", "t": "$t", "m": "counter", "k": "fast_mutex", "irql": 1, "depth": 1},
            {"ev": "release", "t": "$t", "m": "counter", "k": "fast_mutex", "irql": 1, "depth": 1}
          ]},
          {"ev": "thread-end", "t": "$t", "iterations": "$iterations"}
        ]},
        {"ev": "counter", "m": "counter", "value": "$threads*iterations", "expected": "$threads*iterations"}
      ]
    },
    {
      "name": "grt_contention",
      "what": "the same under a KMutex registered in the Grt as counter, looked up by each thread",
      "expects": "exclusion; counter = N x M",
      "params": [["threads", "$threads"], ["iterations", "$iterations"]],
      "threads": "$threads",
      "stream": [
        {"ev": "call", "t": 0, "op": "grt_init", "irql": 0, "r": "Ok"},
        {"ev": "call", "t": 0, "op": "grt_register", "m": "counter", "k": "kmutex", "irql": 0, "r": "Ok"},
        {"ev": "mutex", "m": "counter", "k": "kmutex"},
        {"each_thread": [
          {"ev": "call", "t": "$t", "op": "grt_get", "m": "counter", "k": "kmutex", "irql": 0, "r": "Ok"},
          {"repeat": "$iterations", "do": [
            {"ev": "acquire", "t": "$t", "m": "counter", "k": "kmutex", "irql": 0},
            {"ev": "acquired", "t": "$t", "m": "counter", "k": "kmutex", "irql": 0, "depth": 1},
            {"ev": "release", "t": "$t", "m": "counter", "k": "kmutex", "irql": 0, "depth": 1}
          ]},
          {"ev": "thread-end", "t": "$t", "iterations": "$iterations"}
        ]},
        {"ev": "counter", "m": "counter", "value": "$threads*iterations", "expected": "$threads*iterations"},
        {"ev": "call", "t": 0, "op": "grt_destroy", "irql": 0, "r": "Ok"}
      ]
    },
    {
      "name": "kmutex_recursion",
      "what": "one thread locks a KMutex twice, then releases twice",
      "expects": "depth 2 allowed for kmutex",
      "params": [],
      "threads": 1,
      "stream": [
        {"ev": "call", "t": 0, "op": "new", "m": "km", "k": "kmutex", "irql": 0, "r": "Ok"},
        {"ev": "mutex", "m": "km", "k": "kmutex"},
        {"ev": "acquire", "t": 0, "m": "km", "k": "kmutex", "irql": 0},
        {"ev": "acquired", "t": 0, "m": "km", "k": "kmutex", "irql": 0, "depth": 1},
        {"ev": "acquire", "t": 0, "m": "km", "k": "kmutex", "irql": 0},
        {"ev": "acquired", "t": 0, "m": "km", "k": "kmutex", "irql": 0, "depth": 2},
        {"ev": "release", "t": 0, "m": "km", "k": "kmutex", "irql": 0, "depth": 2},
        {"ev": "release", "t": 0, "m": "km", "k": "kmutex", "irql": 0, "depth": 1}
      ]
    },
    {
      "name": "lock_order_consistent",
      "what": "N threads x M times: KMutex a, then KMutex b, released in reverse order",
      "expects": "no cycle in the lock-order graph; counters a and b = N x M",
      "params": [["threads", "$threads"], ["iterations", "$iterations"]],
      "threads": "$threads",
      "stream": [
        {"ev": "call", "t": 0, "op": "new", "m": "a", "k": "kmutex", "irql": 0, "r": "Ok"},
        {"ev": "mutex", "m": "a", "k": "kmutex"},
        {"ev": "call", "t": 0, "op": "new", "m": "b", "k": "kmutex", "irql": 0, "r": "Ok"},
        {"ev": "mutex", "m": "b", "k": "kmutex"},
        {"each_thread": [
          {"repeat": "$iterations", "do": [
            {"ev": "acquire", "t": "$t", "m": "a", "k": "kmutex", "irql": 0},
            {"ev": "acquired", "t": "$t", "m": "a", "k": "kmutex", "irql": 0, "depth": 1},
            {"ev": "acquire", "t": "$t", "m": "b", "k": "kmutex", "irql": 0},
            {"ev": "acquired", "t": "$t", "m": "b", "k": "kmutex", "irql": 0, "depth": 1},
            {"ev": "release", "t": "$t", "m": "b", "k": "kmutex", "irql": 0, "depth": 1},
            {"ev": "release", "t": "$t", "m": "a", "k": "kmutex", "irql": 0, "depth": 1}
          ]},
          {"ev": "thread-end", "t": "$t", "iterations": "$iterations"}
        ]},
        {"ev": "counter", "m": "a", "value": "$threads*iterations", "expected": "$threads*iterations"},
        {"ev": "counter", "m": "b", "value": "$threads*iterations", "expected": "$threads*iterations"}
      ]
    },
    {
      "name": "irql_errors",
      "what": "lock at DISPATCH on both kinds; KMutex::lock at APC (reached by holding a FastMutex); FastMutexGuard::drop_safe at DISPATCH, then at APC; FastMutex::new at DISPATCH and above; KMutexGuard::drop_safe above DISPATCH, then at PASSIVE",
      "expects": "each call matches the IRQL contract table",
      "params": [],
      "threads": 1,
      "stream": [
        {"ev": "call", "t": 0, "op": "new", "m": "km", "k": "kmutex", "irql": 0, "r": "Ok"},
        {"ev": "mutex", "m": "km", "k": "kmutex"},
        {"ev": "call", "t": 0, "op": "new", "m": "fm", "k": "fast_mutex", "irql": 0, "r": "Ok"},
        {"ev": "mutex", "m": "fm", "k": "fast_mutex"},
        {"ev": "call", "t": 0, "op": "lock", "m": "km", "k": "kmutex", "irql": 2, "r": "IrqlTooHigh", "step": 1},
        {"ev": "call", "t": 0, "op": "lock", "m": "fm", "k": "fast_mutex", "irql": 2, "r": "IrqlTooHigh", "step": 2},
        {"ev": "call", "t": 0, "op": "lock", "m": "fm", "k": "fast_mutex", "irql": 0, "r": "Ok", "step": 3},
        {"ev": "acquired", "t": 0, "m": "fm", "k": "fast_mutex", "irql": 1, "depth": 1},
        {"ev": "call", "t": 0, "op": "lock", "m": "km", "k": "kmutex", "irql": 1, "r": "Ok", "step": 4},
        {"ev": "acquired", "t": 0, "m": "km", "k": "kmutex", "irql": 1, "depth": 1},
        {"ev": "release", "t": 0, "m": "km", "k": "kmutex", "irql": 1, "depth": 1},
        {"ev": "call", "t": 0, "op": "drop_safe", "m": "fm", "k": "fast_mutex", "irql": 2, "r": "IrqlTooHigh", "step": 5},
        {"ev": "release", "t": 0, "m": "fm", "k": "fast_mutex", "irql": 1, "depth": 1},
        {"ev": "call", "t": 0, "op": "drop_safe", "m": "fm", "k": "fast_mutex", "irql": 1, "r": "Ok", "step": 6},
        {"ev": "call", "t": 0, "op": "new", "m": "fm2", "k": "fast_mutex", "irql": 2, "r": "Ok", "step": 7},
        {"ev": "call", "t": 0, "op": "new", "m": "fm2", "k": "fast_mutex", "irql": 3, "r": "IrqlTooHigh", "step": 8},
        {"ev": "call", "t": 0, "op": "lock", "m": "km", "k": "kmutex", "irql": 0, "r": "Ok", "step": 9},
        {"ev": "acquired", "t": 0, "m": "km", "k": "kmutex", "irql": 0, "depth": 1},
        {"ev": "call", "t": 0, "op": "drop_safe", "m": "km", "k": "kmutex", "irql": 3, "r": "IrqlTooHigh", "step": 10},
        {"ev": "release", "t": 0, "m": "km", "k": "kmutex", "irql": 0, "depth": 1},
        {"ev": "call", "t": 0, "op": "drop_safe", "m": "km", "k": "kmutex", "irql": 0, "r": "Ok", "step": 11}
      ]
    },
    {
      "name": "grt_errors",
      "what": "get and register before init, double init, get before any registration, unknown key, wrong type, wrong kind, checked double registration of both kinds, silent replacement, destroy, get after destroy, second destroy",
      "expects": "each call returns the documented error",
      "params": [],
      "threads": 1,
      "stream": [
        {"ev": "call", "t": 0, "op": "grt_get", "m": "km", "k": "kmutex", "irql": 0, "r": "GrtIsNull", "step": 1},
        {"ev": "call", "t": 0, "op": "grt_register", "m": "km", "k": "kmutex", "irql": 0, "r": "GrtIsNull", "step": 2},
        {"ev": "call", "t": 0, "op": "grt_init", "irql": 0, "r": "Ok", "step": 3},
        {"ev": "call", "t": 0, "op": "grt_init", "irql": 0, "r": "GrtAlreadyExists", "step": 4},
        {"ev": "call", "t": 0, "op": "grt_get", "m": "km", "k": "kmutex", "irql": 0, "r": "GrtIsEmpty", "step": 5},
        {"ev": "call", "t": 0, "op": "grt_register", "m": "km", "k": "kmutex", "irql": 0, "r": "Ok", "step": 6},
        {"ev": "call", "t": 0, "op": "grt_get", "m": "missing", "k": "kmutex", "irql": 0, "r": "KeyNotFound", "step": 7},
        {"ev": "call", "t": 0, "op": "grt_get", "m": "km", "k": "kmutex", "irql": 0, "r": "DowncastError", "data": "u64", "step": 8},
        {"ev": "call", "t": 0, "op": "grt_get", "m": "km", "k": "fast_mutex", "irql": 0, "r": "DowncastError", "step": 9},
        {"ev": "call", "t": 0, "op": "grt_get", "m": "km", "k": "kmutex", "irql": 0, "r": "Ok", "step": 10},
        {"ev": "call", "t": 0, "op": "grt_register_checked", "m": "km", "k": "kmutex", "irql": 0, "r": "KeyExists", "step": 11},
        {"ev": "call", "t": 0, "op": "grt_register", "m": "km", "k": "kmutex", "irql": 0, "r": "Ok", "step": 12},
        {"ev": "call", "t": 0, "op": "grt_register", "m": "fm", "k": "fast_mutex", "irql": 0, "r": "Ok", "step": 13},
        {"ev": "call", "t": 0, "op": "grt_register_checked", "m": "fm", "k": "fast_mutex", "irql": 0, "r": "KeyExists", "step": 14},
        {"ev": "call", "t": 0, "op": "grt_destroy", "irql": 0, "r": "Ok", "step": 15},
        {"ev": "call", "t": 0, "op": "grt_get", "m": "km", "k": "kmutex", "irql": 0, "r": "GrtIsNull", "step": 16},
        {"ev": "call", "t": 0, "op": "grt_destroy", "irql": 0, "r": "GrtIsNull", "step": 17}
      ]
    },
    {
      "name": "to_owned",
      "what": "for each kind: a mutex made with 7, locked and 35 added, then to_owned / to_owned_box; the value comes back and is dropped once",
      "expects": "call results Ok; counter m = 42, counter m_drops = 1",
      "params": [],
      "threads": 1,
      "stream": [
        {"ev": "call", "t": 0, "op": "new", "m": "km", "k": "kmutex", "irql": 0, "r": "Ok"},
        {"ev": "mutex", "m": "km", "k": "kmutex"},
        {"ev": "acquire", "t": 0, "m": "km", "k": "kmutex", "irql": 0},
        {"ev": "acquired", "t": 0, "m": "km", "k": "kmutex", "irql": 0, "depth": 1},
        {"ev": "release", "t": 0, "m": "km", "k": "kmutex", "irql": 0, "depth": 1},
        {"ev": "call", "t": 0, "op": "to_owned", "m": "km", "k": "kmutex", "irql": 0, "r": "Ok"},
        {"ev": "counter", "m": "km", "value": 42, "expected": 42},
        {"ev": "counter", "m": "km_drops", "value": 1, "expected": 1},
        {"ev": "call", "t": 0, "op": "new", "m": "km_box", "k": "kmutex", "irql": 0, "r": "Ok"},
        {"ev": "mutex", "m": "km_box", "k": "kmutex"},
        {"ev": "acquire", "t": 0, "m": "km_box", "k": "kmutex", "irql": 0},
        {"ev": "acquired", "t": 0, "m": "km_box", "k": "kmutex", "irql": 0, "depth": 1},
        {"ev": "release", "t": 0, "m": "km_box", "k": "kmutex", "irql": 0, "depth": 1},
        {"ev": "call", "t": 0, "op": "to_owned_box", "m": "km_box", "k": "kmutex", "irql": 0, "r": "Ok"},
        {"ev": "counter", "m": "km_box", "value": 42, "expected": 42},
        {"ev": "counter", "m": "km_box_drops", "value": 1, "expected": 1},
        {"ev": "call", "t": 0, "op": "new", "m": "fm", "k": "fast_mutex", "irql": 0, "r": "Ok"},
        {"ev": "mutex", "m": "fm", "k": "fast_mutex"},
        {"ev": "acquire", "t": 0, "m": "fm", "k": "fast_mutex", "irql": 0},
        {"ev": "acquired", "t": 0, "m": "fm", "k": "fast_mutex", "irql": 1, "depth": 1},
        {"ev": "release", "t": 0, "m": "fm", "k": "fast_mutex", "irql": 1, "depth": 1},
        {"ev": "call", "t": 0, "op": "to_owned", "m": "fm", "k": "fast_mutex", "irql": 0, "r": "Ok"},
        {"ev": "counter", "m": "fm", "value": 42, "expected": 42},
        {"ev": "counter", "m": "fm_drops", "value": 1, "expected": 1},
        {"ev": "call", "t": 0, "op": "new", "m": "fm_box", "k": "fast_mutex", "irql": 0, "r": "Ok"},
        {"ev": "mutex", "m": "fm_box", "k": "fast_mutex"},
        {"ev": "acquire", "t": 0, "m": "fm_box", "k": "fast_mutex", "irql": 0},
        {"ev": "acquired", "t": 0, "m": "fm_box", "k": "fast_mutex", "irql": 1, "depth": 1},
        {"ev": "release", "t": 0, "m": "fm_box", "k": "fast_mutex", "irql": 1, "depth": 1},
        {"ev": "call", "t": 0, "op": "to_owned_box", "m": "fm_box", "k": "fast_mutex", "irql": 0, "r": "Ok"},
        {"ev": "counter", "m": "fm_box", "value": 42, "expected": 42},
        {"ev": "counter", "m": "fm_box_drops", "value": 1, "expected": 1}
      ]
    },
    {
      "name": "drop_safe_then_drop",
      "what": "for fm (FastMutex), then km (KMutex): lock, drop_safe (the release), then the guard leaves scope and its Drop releases a second time (reported as call op=drop, printed only if the system survived it)",
      "expects": "drop_safe releases (release, then call op=drop_safe r=Ok); the second release is the crate's double release: surviving it passes, and so does a bugcheck that stops it (the OS caught the double release); runs last",
      "params": [],
      "threads": 1,
      "last": true,
      "verdict": {"allowed_crash": {"stop_codes": [30, 126, 142, 196], "why": "KeReleaseMutex by a thread that does not own the mutex raises STATUS_MUTANT_NOT_OWNED; unhandled in a system thread it stops the system with 0x7E (0x1E, 0x8E as relatives); Driver Verifier reports the fast mutex misuse as 0xC4"}},
      "stream": [
        {"ev": "call", "t": 0, "op": "new", "m": "fm", "k": "fast_mutex", "irql": 0, "r": "Ok"},
        {"ev": "mutex", "m": "fm", "k": "fast_mutex"},
        {"ev": "acquire", "t": 0, "m": "fm", "k": "fast_mutex", "irql": 0},
        {"ev": "acquired", "t": 0, "m": "fm", "k": "fast_mutex", "irql": 1, "depth": 1},
        {"ev": "release", "t": 0, "m": "fm", "k": "fast_mutex", "irql": 1, "depth": 1},
        {"ev": "call", "t": 0, "op": "drop_safe", "m": "fm", "k": "fast_mutex", "irql": 1, "r": "Ok"},
        {"ev": "call", "t": 0, "op": "drop", "m": "fm", "k": "fast_mutex", "irql": 0, "r": "Ok"},
        {"ev": "call", "t": 0, "op": "new", "m": "km", "k": "kmutex", "irql": 0, "r": "Ok"},
        {"ev": "mutex", "m": "km", "k": "kmutex"},
        {"ev": "acquire", "t": 0, "m": "km", "k": "kmutex", "irql": 0},
        {"ev": "acquired", "t": 0, "m": "km", "k": "kmutex", "irql": 0, "depth": 1},
        {"ev": "release", "t": 0, "m": "km", "k": "kmutex", "irql": 0, "depth": 1},
        {"ev": "call", "t": 0, "op": "drop_safe", "m": "km", "k": "kmutex", "irql": 0, "r": "Ok"},
        {"ev": "call", "t": 0, "op": "drop", "m": "km", "k": "kmutex", "irql": 0, "r": "Ok"}
      ]
    },
    {
      "name": "neg_lock_inversion",
      "what": "negative control: thread 0 takes a then b; thread 1, once thread 0 is done and delay_ms later, takes b then a (no deadlock)",
      "expects": "vmtest must flag the inversion",
      "negative": true,
      "params": [["delay_ms", 100]],
      "threads": 2,
      "verdict": {"expected_findings": ["lock_order"],
                  "under_verifier": {"verifier": ["lock_hierarchy_violation"], "stop_codes": [], "why": "Driver Verifier's deadlock detection reports the inversion as bug check 0xC4 with parameter 1 0x1001, a lock hierarchy violation (Microsoft Learn, Bug Check 0xC4)"}},
      "stream": [
        {"ev": "call", "t": 0, "op": "new", "m": "a", "k": "kmutex", "irql": 0, "r": "Ok"},
        {"ev": "mutex", "m": "a", "k": "kmutex"},
        {"ev": "call", "t": 0, "op": "new", "m": "b", "k": "kmutex", "irql": 0, "r": "Ok"},
        {"ev": "mutex", "m": "b", "k": "kmutex"},
        {"ev": "acquire", "t": 0, "m": "a", "k": "kmutex", "irql": 0},
        {"ev": "acquired", "t": 0, "m": "a", "k": "kmutex", "irql": 0, "depth": 1},
        {"ev": "acquire", "t": 0, "m": "b", "k": "kmutex", "irql": 0},
        {"ev": "acquired", "t": 0, "m": "b", "k": "kmutex", "irql": 0, "depth": 1},
        {"ev": "release", "t": 0, "m": "b", "k": "kmutex", "irql": 0, "depth": 1},
        {"ev": "release", "t": 0, "m": "a", "k": "kmutex", "irql": 0, "depth": 1},
        {"ev": "thread-end", "t": 0, "iterations": 1},
        {"ev": "acquire", "t": 1, "m": "b", "k": "kmutex", "irql": 0},
        {"ev": "acquired", "t": 1, "m": "b", "k": "kmutex", "irql": 0, "depth": 1},
        {"ev": "acquire", "t": 1, "m": "a", "k": "kmutex", "irql": 0},
        {"ev": "acquired", "t": 1, "m": "a", "k": "kmutex", "irql": 0, "depth": 1},
        {"ev": "release", "t": 1, "m": "a", "k": "kmutex", "irql": 0, "depth": 1},
        {"ev": "release", "t": 1, "m": "b", "k": "kmutex", "irql": 0, "depth": 1},
        {"ev": "thread-end", "t": 1, "iterations": 1}
      ]
    },
    {
      "name": "neg_wait_at_dispatch",
      "what": "negative control: a dispatcher wait of timeout_ms at DISPATCH_LEVEL without the crate (Linux: msleep with preemption disabled)",
      "expects": "vmtest must report the crash by its code and name",
      "negative": true,
      "params": [["timeout_ms", 10]],
      "threads": 1,
      "verdict": {"expected_crash": {"stop_codes": [10, 209, 184], "why": "wdk-mutex-api.md, IRQL facts: a dispatcher wait at DISPATCH_LEVEL is IRQL_NOT_LESS_OR_EQUAL (0xA) or ATTEMPTED_SWITCH_FROM_DPC (0xB8) and relatives; 0xD1 is the driver-attributed form of 0xA"},
                  "under_verifier": {"verifier": ["irql_checking"], "stop_codes": [10, 209, 184], "why": "Driver Verifier's IRQL checking reports a wait at DISPATCH_LEVEL as bug check 0xC4 with parameter 1 0x120-0x122 (Microsoft Learn, Bug Check 0xC4), or the wait stops the system as without Verifier"}},
      "stream": [
        {"ev": "call", "t": 0, "op": "wait", "irql": 2, "r": "Ok"}
      ]
    }
  ]
}
"""
