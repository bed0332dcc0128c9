//! Image layer unpacking: arbitrary bytes as a (possibly gzip- or zstd-compressed) tar
//! stream, unpacked into a fresh directory. Must never panic, and must never write outside
//! that directory: traversal, absolute paths, symlink and hardlink escapes, device nodes are
//! refused. After each run the parent holds only the destination.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = tempfile::tempdir().expect("a temporary directory");
    let dest = root.path().join("layer");
    std::fs::create_dir(&dest).expect("the destination");
    let limits = gantry_runtime::image::UnpackLimits { max_bytes: 64 << 20, ..Default::default() };
    let _ = gantry_runtime::image::unpack::unpack_layer(data, &dest, "fuzz", limits);
    let outside: Vec<_> = std::fs::read_dir(root.path())
        .expect("the parent")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n != "layer")
        .collect();
    assert!(outside.is_empty(), "the layer wrote outside its directory: {outside:?}");
});
