//! Configures the link of the driver binary (WDK libraries, `/DRIVER`, `/ENTRY:DriverEntry`, ...)
//! from the `[package.metadata.wdk]` section of `Cargo.toml`.

fn main() -> Result<(), wdk_build::ConfigError> {
    wdk_build::configure_wdk_binary_build()
}
