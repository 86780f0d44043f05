//! The crate is built for baseline x86-64, so the loops the compiler vectorises by itself
//! (Winograd's transforms, the BatchNorm passes) use 4-wide SSE. [`avx512_too!`] defines a
//! function that runs the same body compiled for AVX-512 (16 lanes) on CPUs that have it.
//!
//! Element-wise loops give the same bits at either width (no reassociation, no contraction
//! into FMAs: Rust does neither), so this is not a kernel choice and changes no result.

/// `avx512_too!(vis fn name(arg: Type, ...) -> Ret => body);` defines `name`, which calls the
/// `#[inline(always)]` function `body` with the same arguments: compiled for AVX-512F where
/// the CPU has it (detected once at run time), else as the crate is built. Everything `body`
/// calls that should widen must be `#[inline(always)]` too.
macro_rules! avx512_too {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:path) => {
        $(#[$meta])*
        #[allow(unsafe_code)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn wide($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if $crate::sgemm::best_path() == $crate::sgemm::Path::Avx512 {
                    // SAFETY: the CPU supports AVX-512F: `best_path` detected it at run time,
                    // which is all `wide`'s target feature requires.
                    return unsafe { wide($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

pub(crate) use avx512_too;
