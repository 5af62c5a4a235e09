//! Feeds the virtio-net device queues laid out from fuzz input: descriptor
//! chains that loop, point outside guest memory, are too long or have the
//! wrong direction. The device must neither panic nor hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    devices::virtio::net::fuzz_queue(data);
});
