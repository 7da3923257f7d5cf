//! Rendering close reports as text: `text` for people at a terminal (with
//! `fold` for storms and `frame` for one stack frame), `json` for machines
//! (one object per line), `escape` for anything a traced process or a
//! client chose. Where the text goes (stdout, `--output`, metrics, OTLP) is
//! `wstrace::output`.
pub mod escape;
pub mod fold;
pub mod frame;
pub mod json;
pub mod text;
pub mod view;

pub use view::View;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Format {
    /// A readable block per close: header line, closer, indented stacks.
    Text,
    /// One JSON object per line (stable keys; for log pipelines and scripts).
    Json,
}

/// One report in `format`; text in colour or not, with every stack frame
/// (`full_stacks`) or the compact stacks.
pub fn render(format: Format, color: bool, full_stacks: bool, v: &View<'_>) -> String {
    match format {
        Format::Text => text::render(v, color, full_stacks),
        Format::Json => json::render(v),
    }
}

/// `--color`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ColorChoice {
    /// Colour when stdout is a terminal.
    Auto,
    Always,
    Never,
}
