//! Stand-in for wdk-panic 0.4, the panic handler (see ../README.md).
#![no_std]
