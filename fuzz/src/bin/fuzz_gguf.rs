//! AFL target: `ferroq_fuzz::Target::Gguf` on each input.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        ferroq_fuzz::Target::Gguf.run(data);
    });
}
