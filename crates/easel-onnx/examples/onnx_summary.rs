//! Prints an ONNX model's inputs, outputs, operator counts and initializers (a debugging aid for
//! writing importers): `cargo run -p easel-onnx --example onnx_summary -- MODEL.onnx`.
use std::collections::BTreeMap;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: onnx_summary MODEL.onnx")?;
    let model = easel_onnx::OnnxModel::from_bytes(&std::fs::read(&path)?)?;
    println!("opsets: {:?}", model.opsets());
    println!("inputs: {:?}", model.input_names());
    println!("outputs: {:?}", model.output_names());
    let mut ops = BTreeMap::new();
    for node in model.nodes() {
        *ops.entry(node.op_type.as_str()).or_insert(0usize) += 1;
    }
    println!("ops: {ops:?}");
    for name in model.initializer_names() {
        let t = model.constant(name)?;
        println!("{name} {:?}", t.dims);
    }
    Ok(())
}
