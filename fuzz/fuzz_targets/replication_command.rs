#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walkeeper::fuzzing::replication_command(data));
