//! What every BPF object of this crate carries: the license the kernel checks before it lets a
//! program call GPL-only helpers, and a panic handler (the verifier proves none is reached).
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
