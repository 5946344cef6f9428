//! The public handles: [`Svm`] and its builder, [`Region`], [`DeviceHandle`].
//! Every public method of them lives here.

mod device;
mod fork;
mod region;
mod svm;

pub use device::{DeviceHandle, DeviceInfo};
pub use region::{Region, View, ViewMut};
pub use svm::{huge_mapped, MemAdvice, Svm, SvmBuilder};
