//! A stage of a two-stage text pipeline. Its `dfgs.json` uses it twice:
//! `/pipeline/in` --(upper-case; `trigger_put`)--> `/pipeline/stage1`
//! --(tag; `put`)--> `/pipeline/out`.
//!
//! Configuration: `{"stage": "upper"}` upper-cases the text; `{"stage": "tag"}` appends
//! which node and worker ran it and the input's version. Anything else is refused when
//! the DFG is added, so a typo surfaces at once.

use squall_udl::{Bytes, Context, Input, Udl, UdlError, export_udl};

enum Stage {
    Upper,
    Tag,
}

struct PipelineStage {
    stage: Stage,
}

impl PipelineStage {
    fn new(config: &str) -> Result<PipelineStage, String> {
        let compact: String = config.chars().filter(|c| !c.is_whitespace()).collect();
        let stage = if compact.contains(r#""stage":"upper""#) {
            Stage::Upper
        } else if compact.contains(r#""stage":"tag""#) {
            Stage::Tag
        } else {
            return Err(format!(
                r#"expected {{"stage": "upper"}} or {{"stage": "tag"}}, got {config}"#
            ));
        };
        Ok(PipelineStage { stage })
    }
}

impl Udl for PipelineStage {
    fn handle(&self, input: &Input<'_>, ctx: &mut dyn Context) -> Result<(), UdlError> {
        let out = match self.stage {
            Stage::Upper => Bytes::from(input.blob.to_ascii_uppercase()),
            Stage::Tag => {
                let mut text = input.blob.to_vec();
                text.extend_from_slice(
                    format!(
                        " [tagged by node {} worker {}, input version {}]",
                        input.sender,
                        ctx.worker_id(),
                        input.version
                    )
                    .as_bytes(),
                );
                Bytes::from(text)
            }
        };
        ctx.emit(input.key_suffix(), out)
    }
}

export_udl! {
    uuid: "7c1e5a40-2b6d-4f1e-9a3c-5d8e0f2a4b61",
    description: "pipeline stage: upper-case or tag text, per its configuration",
    constructor: PipelineStage::new,
}
