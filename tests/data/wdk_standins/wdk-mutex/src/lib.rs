//! Stand-in for wdk-mutex 1.3.2: the API the test driver uses (wdk-mutex-api.md), no behaviour
//! (see ../README.md).
#![no_std]
extern crate alloc;
pub mod errors {
    #[derive(Debug, PartialEq, Eq, Clone, Copy)]
    pub enum DriverMutexError { IrqlTooHigh, IrqlNotAPCLevel, PagedPoolAllocFailed }
    #[derive(Debug, PartialEq, Eq)]
    pub enum GrtError { GrtAlreadyExists, GrtIsNull, GrtIsEmpty, KeyNotFound, KeyExists, DowncastError, DriverMutexError(DriverMutexError) }
}
macro_rules! kind {
    ($m:ident, $t:ident, $g:ident) => {
        pub mod $m {
            use alloc::boxed::Box;
            use core::marker::PhantomData;
            use core::ops::{Deref, DerefMut};
            use crate::errors::DriverMutexError;
            pub struct $t<T> { data: *mut T }
            unsafe impl<T: Send> Send for $t<T> {}
            unsafe impl<T: Send> Sync for $t<T> {}
            impl<T> $t<T> {
                pub fn new(data: T) -> Result<Self, DriverMutexError> { let _ = data; Err(DriverMutexError::PagedPoolAllocFailed) }
                pub fn lock(&self) -> Result<$g<'_, T>, DriverMutexError> { Ok($g { m: self, _p: PhantomData }) }
                pub unsafe fn to_owned(self) -> T { loop {} }
                pub unsafe fn to_owned_box(self) -> Box<T> { loop {} }
            }
            pub struct $g<'a, T> { m: &'a $t<T>, _p: PhantomData<&'a mut T> }
            impl<T> $g<'_, T> { pub fn drop_safe(&mut self) -> Result<(), DriverMutexError> { Ok(()) } }
            impl<T> Deref for $g<'_, T> { type Target = T; fn deref(&self) -> &T { unsafe { &*self.m.data } } }
            impl<T> DerefMut for $g<'_, T> { fn deref_mut(&mut self) -> &mut T { unsafe { &mut *self.m.data } } }
            impl<T> Drop for $g<'_, T> { fn drop(&mut self) {} }
        }
    };
}
kind!(kmutex, KMutex, KMutexGuard);
kind!(fast_mutex, FastMutex, FastMutexGuard);
pub mod grt {
    use core::any::Any;
    use crate::errors::GrtError;
    use crate::fast_mutex::FastMutex;
    use crate::kmutex::KMutex;
    pub struct Grt;
    impl Grt {
        pub fn init() -> Result<(), GrtError> { Ok(()) }
        pub fn register_kmutex<T: Any + Send + Sync + 'static>(label: &'static str, data: T) -> Result<(), GrtError> { let _ = (label, data); Ok(()) }
        pub fn register_fast_mutex<T: Any + Send + Sync + 'static>(label: &'static str, data: T) -> Result<(), GrtError> { let _ = (label, data); Ok(()) }
        pub fn register_kmutex_checked<T: Any + Send + Sync + 'static>(label: &'static str, data: T) -> Result<(), GrtError> { let _ = (label, data); Ok(()) }
        pub fn register_fast_mutex_checked<T: Any + Send + Sync + 'static>(label: &'static str, data: T) -> Result<(), GrtError> { let _ = (label, data); Ok(()) }
        pub fn get_kmutex<T: Any + Send + Sync + 'static>(label: &str) -> Result<&'static KMutex<T>, GrtError> { let _ = label; Err(GrtError::GrtIsNull) }
        pub fn get_fast_mutex<T: Any + Send + Sync + 'static>(label: &str) -> Result<&'static FastMutex<T>, GrtError> { let _ = label; Err(GrtError::GrtIsNull) }
        pub unsafe fn destroy() -> Result<(), GrtError> { Ok(()) }
    }
}
