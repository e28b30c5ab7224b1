//! prost-build over onnx.proto, with protoc from the protoc-bin-vendored crate so nothing
//! needs to be installed. Usage: gen-onnx-proto ONNX_PROTO OUT_DIR
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (proto, out) = (&args[1], &args[2]);
    let include = std::path::Path::new(proto).parent().ok_or("proto has no directory")?;
    // SAFETY: single-threaded program setting its own environment before spawning protoc.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    prost_build::Config::new().out_dir(out).compile_protos(&[proto], &[include])?;
    Ok(())
}
