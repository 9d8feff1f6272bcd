//! The command line as clap sees it: every subcommand, flag and help text, and the small
//! conversions of flags into the library's plain settings. Nothing below `cli` knows clap.

use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use edge_mnv2::augment::AugmentParams;
use edge_mnv2::dataset::SplitFractions;
use edge_mnv2::features;
use edge_mnv2::head::TrainConfig;
use edge_mnv2::loader::BackboneChoice;
use edge_mnv2::models::Precision;
use edge_mnv2::novelty::DEFAULT_KEEP_RATE;
use edge_mnv2::views::Views;

#[derive(Parser)]
#[command(
    name = "edge-mnv2",
    version,
    about = "A trainable MobileNetV2 image classifier for Linux boards"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args)]
pub struct ModelArg {
    /// Model name from `edge-mnv2 models`, or a path to a model file
    #[arg(long, short = 'm', value_name = "PATH|NAME")]
    pub model: Option<String>,
    /// Arithmetic for TFLite models (default: this board's calibration, else int8)
    #[arg(long, value_parser = precision_parser())]
    pub precision: Option<Precision>,
}

impl ModelArg {
    pub fn choice(&self) -> BackboneChoice {
        BackboneChoice {
            model: self.model.clone(),
            precision: self.precision,
        }
    }
}

/// `--precision`'s values and their help, from the library's own list.
fn precision_parser() -> impl TypedValueParser<Value = Precision> {
    PossibleValuesParser::new(
        Precision::ALL.map(|p| PossibleValue::new(p.as_str()).help(p.description())),
    )
    .map(|name| {
        name.parse::<Precision>()
            .expect("one of the listed precisions")
    })
}

#[derive(Args)]
pub struct RunArgs {
    /// Worker threads for embedding (default: all cores)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Embedding cache directory (default: $EDGE_MNV2_CACHE or ~/.cache/edge-mnv2/embeddings)
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Do not read or write the embedding cache
    #[arg(long)]
    pub no_cache: bool,
}

impl RunArgs {
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    pub fn cache_dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            None
        } else {
            self.cache.clone().or_else(features::default_cache_dir)
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Print the top-K ImageNet classes of each image
    Classify(ClassifyArgs),
    /// Write the 1280-d MobileNetV2 embedding of each image
    ///
    /// Output: one line per image. Default format is tab-separated: the image path, then the 1280
    /// values separated by spaces. With --json, JSON lines: {"file", "model", "embedding": [...]}.
    Embed(EmbedArgs),
    /// Train a classifier head on a folder of labelled images and evaluate it on a held-out split
    ///
    /// DATA is either DATA/<class>/<image> (split 70/15/15 by a hash of each path) or
    /// DATA/{train,val,test}/<class>/<image>. Writes head.json, report.json and report.md to --out.
    Finetune(FinetuneArgs),
    /// Evaluate a trained head on a <class>/<image> folder
    Evaluate(EvaluateArgs),
    /// Label images with a trained head
    Predict(PredictArgs),
    /// Measure each precision × thread count on this board and pick the fastest that agrees with
    /// LiteRT's arithmetic (int8)
    ///
    /// Writes calibration/<board>.json (atomically); classify, embed, finetune, predict and serve
    /// then use its choice unless --precision is given. $EDGE_MNV2_CALIBRATION names another file.
    #[command(after_help = "Examples:\n  \
        edge-mnv2 calibrate --images data        # any folder of images, e.g. the frames capture saved\n  \
        edge-mnv2 calibrate --threads 1,2 --json # at a source checkout's root: calibration/images.txt")]
    Calibrate(CalibrateArgs),
    /// Classify frames from a camera or files continuously: JSON lines on stdout, HTTP API
    ///
    /// Every key can also come from --config (TOML, same names; flags win). SIGHUP or
    /// POST /reload reloads the head; SIGTERM/SIGINT stop.
    Serve(ServeArgs),
    /// Save frames from a camera or files as JPEGs into DATA/<class>/ for finetune
    Capture(CaptureArgs),
    /// List the known models (default), or fetch one: `models list`, `models fetch [NAME]`
    Models(ModelsArgs),
    /// Install a head on running `serve`s (or roll back): signed, through their MQTT broker, or
    /// with the bearer token to each one's HTTP API (--url)
    PushHead(PushHeadArgs),
}

#[derive(Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// How many classes to print per image
    #[arg(long, short = 'k', default_value_t = 5)]
    pub top: usize,
    /// One JSON object per image on stdout
    #[arg(long)]
    pub json: bool,
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
}

#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// JSON lines instead of tab-separated text
    #[arg(long)]
    pub json: bool,
    /// Write to FILE (atomically) instead of stdout
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
}

#[derive(Args)]
pub struct FinetuneArgs {
    /// The labelled image folder
    pub data: PathBuf,
    /// Output directory for head.json, report.json and report.md
    #[arg(long, short = 'o', default_value = "edge-mnv2-out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArg,
    /// Maximum number of epochs
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    pub epochs: usize,
    /// Stop after this many epochs without a better validation loss
    #[arg(long, default_value_t = TrainConfig::default().patience)]
    pub patience: usize,
    /// Adam learning rate
    #[arg(long, default_value_t = TrainConfig::default().lr)]
    pub lr: f32,
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    pub batch_size: usize,
    /// L2 weight decay on the head's weights
    #[arg(long, default_value_t = TrainConfig::default().weight_decay)]
    pub weight_decay: f32,
    /// Random augmented views per training image (0 turns augmentation off)
    #[arg(long, default_value_t = 2)]
    pub augment: usize,
    /// Fixed views per image, for training and test: 1 plain, 2 + flip, 4 + centre 87.5% crop and
    /// its flip; the head records it and predict/evaluate/serve average over the same views
    #[arg(long, default_value_t = Views::FOUR, value_name = "1|2|4")]
    pub views: Views,
    /// Share of the known validation images the novelty threshold keeps (the rest, and images
    /// farther from the training data, are `unknown`)
    #[arg(long, default_value_t = DEFAULT_KEEP_RATE, value_name = "RATE")]
    pub keep_rate: f32,
    /// Folder of images of none of the classes (searched recursively): the report measures how
    /// well they are told apart and how many are accepted
    #[arg(long, value_name = "DIR")]
    pub unknown: Option<PathBuf>,
    /// Maximum rotation of an augmented view, in degrees
    #[arg(long, default_value_t = AugmentParams::default().rotate_deg)]
    pub rotate: f32,
    /// Maximum zoom of an augmented view (0.15 = ±15%)
    #[arg(long, default_value_t = AugmentParams::default().zoom)]
    pub zoom: f32,
    /// Never flip augmented views horizontally
    #[arg(long)]
    pub no_flip: bool,
    /// Do not weight classes by inverse frequency
    #[arg(long)]
    pub no_class_weights: bool,
    /// Do not standardise embeddings before the head
    #[arg(long)]
    pub no_standardize: bool,
    /// Split for DATA/<class>/<image>: train/val/test percentages
    #[arg(long, default_value = "70/15/15")]
    pub split: SplitFractions,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub run: RunArgs,
    /// Print report.json to stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct EvaluateArgs {
    /// head.json, or the directory finetune wrote it to
    #[arg(long, value_name = "DIR|FILE")]
    pub head: PathBuf,
    #[command(flatten)]
    pub model: ModelArg,
    /// Folder of <class>/<image> with the head's class names
    pub testdir: PathBuf,
    /// Views averaged per image (1, 2 or 4) [default: the head's training views]
    #[arg(long, value_name = "1|2|4")]
    pub views: Option<Views>,
    /// Folder of images of none of the classes (searched recursively), to measure rejection on
    #[arg(long, value_name = "DIR")]
    pub unknown: Option<PathBuf>,
    /// Also write report.md, report.json and the SVG plots into DIR
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Print the metrics as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct PredictArgs {
    /// head.json, or the directory finetune wrote it to
    #[arg(long, value_name = "DIR|FILE")]
    pub head: PathBuf,
    #[command(flatten)]
    pub model: ModelArg,
    /// One JSON object per image on stdout
    #[arg(long)]
    pub json: bool,
    /// Views averaged per image (1, 2 or 4) [default: the head's training views]
    #[arg(long, value_name = "1|2|4")]
    pub views: Option<Views>,
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
}

#[derive(Args)]
pub struct CalibrateArgs {
    /// A model name or path (default: the default model); must be a TFLite file
    #[arg(long, short = 'm', value_name = "PATH|NAME")]
    pub model: Option<String>,
    /// Images to measure on: a folder of images (e.g. frames `capture` saved), or a folder with
    /// an images.txt list (default: calibration/, the list a source checkout has at its root)
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Thread counts to try, comma-separated (default: 1, 2, 4, ... up to the core count)
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Timed frames per precision and thread count
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Least share of images whose ImageNet top-1 must equal int8's (LiteRT's arithmetic)
    #[arg(long, default_value_t = 0.99)]
    pub min_agreement: f64,
    /// Output file (default: $EDGE_MNV2_CALIBRATION or calibration/<board>.json)
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print the calibration as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub action: Option<ModelsAction>,
    /// JSON instead of a table (for the default `list`)
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum ModelsAction {
    /// List the known models, where each was found, and whether its checksum matches
    List {
        /// JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Download a model into the user cache (~/.cache/edge-mnv2/models), verified by its sha256
    ///
    /// Nothing is downloaded when a copy with the right checksum is already in a search
    /// directory. A failed, cut or wrong download leaves no file behind. Only https:// URLs,
    /// plus http:// to this machine (127.0.0.1, localhost) for a local mirror or tests.
    Fetch {
        /// Model name from `edge-mnv2 models` (default: the manifest's default model)
        #[arg(conflicts_with = "all")]
        name: Option<String>,
        /// Every model that has a download URL and a pinned checksum
        #[arg(long)]
        all: bool,
        /// Download from this URL instead of the manifest's (the checksum is still the manifest's)
        #[arg(long, value_name = "URL", conflicts_with = "all")]
        url: Option<String>,
        /// Download again even if a verified copy exists
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
pub struct SourceArgs {
    /// Frame source: a V4L2 device (/dev/videoN), a folder of images (sorted, looped), one image
    /// (repeated), or an MJPEG stream file (.mjpeg/.mjpg) [default: /dev/video0]
    #[arg(long, value_name = "DEVICE|DIR|FILE")]
    pub source: Option<String>,
    /// Camera width in pixels [default: 640]
    #[arg(long)]
    pub width: Option<u32>,
    /// Camera height in pixels [default: 480]
    #[arg(long)]
    pub height: Option<u32>,
    /// Camera frame rate; for file sources, replay at this rate (dropping frames under load)
    /// instead of as fast as inference takes them [camera default: 15]
    #[arg(long)]
    pub fps: Option<f64>,
    /// TOML file with `serve`'s long flag names as keys (`mqtt_username` for --mqtt-username);
    /// a flag given here wins over the same key in the file
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Args)]
pub struct ServeArgs {
    /// head.json, or the directory finetune wrote it to
    #[arg(long, value_name = "DIR|FILE")]
    pub head: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub source: SourceArgs,
    /// HTTP address to listen on; port 0 picks a free port [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// No HTTP server: JSON lines on stdout only
    #[arg(long)]
    pub no_http: bool,
    /// File holding the board's token: POST endpoints require it (`Authorization: Bearer TOKEN`;
    /// needed to listen beyond loopback), and it keys the HMAC of MQTT head rollout commands
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Listen beyond loopback without a token: anyone who reaches the port may classify and reload
    #[arg(long)]
    pub insecure_no_token: bool,
    /// Below this confidence the label is `unknown` [default: 0]; a frame is also `unknown` when
    /// its novelty is above the head's threshold
    #[arg(long, value_name = "X")]
    pub threshold: Option<f32>,
    /// Views averaged per frame: 1 plain, 2 + flip, 4 + centre crop and its flip; each view is one
    /// more backbone run per frame [default: the head's training views]
    #[arg(long, value_name = "1|2|4")]
    pub views: Option<Views>,
    /// Stop after this many classified frames (bounded runs, tests)
    #[arg(long, value_name = "N")]
    pub frames: Option<u64>,
    /// Publish results to an MQTT broker: mqtt://HOST:PORT or mqtts://HOST:PORT
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
    /// Broker user name
    #[arg(long, value_name = "USER")]
    pub mqtt_username: Option<String>,
    /// A file holding the broker password (kept out of the command line and the config file)
    #[arg(long, value_name = "FILE")]
    pub mqtt_password_file: Option<PathBuf>,
    /// PEM CA certificates for mqtts:// [default: the compiled-in Mozilla roots]
    #[arg(long, value_name = "FILE")]
    pub mqtt_ca_file: Option<PathBuf>,
    /// Topic prefix: topics are <PREFIX>/<board>/... [default: edge-mnv2]
    #[arg(long, value_name = "PREFIX")]
    pub mqtt_prefix: Option<String>,
    /// Publish `every` result, or only label `changes` plus a heartbeat [default: every]
    #[arg(long, value_name = "every|changes")]
    pub mqtt_publish: Option<String>,
    /// Seconds between heartbeats with --mqtt-publish changes [default: 60]
    #[arg(long, value_name = "S")]
    pub mqtt_heartbeat_s: Option<f64>,
    /// Publish Home Assistant discovery configs [default: true]
    #[arg(long, value_name = "true|false")]
    pub mqtt_discovery: Option<bool>,
    /// This board's name in MQTT topics and Home Assistant [default: the host name]
    #[arg(long, value_name = "NAME")]
    pub board: Option<String>,
}

#[derive(Args)]
pub struct PushHeadArgs {
    /// The head to install: head.json, or the directory finetune wrote it to
    #[arg(long, value_name = "DIR|FILE", required_unless_present_any = ["head_url", "rollback"], conflicts_with_all = ["head_url", "rollback"])]
    pub head: Option<PathBuf>,
    /// Instead of sending the file: an https:// URL the boards fetch it from (with --sha256)
    #[arg(
        long,
        value_name = "URL",
        requires = "sha256",
        conflicts_with = "rollback"
    )]
    pub head_url: Option<String>,
    /// The sha256 of the file at --head-url
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Put each board's previous head back instead
    #[arg(long)]
    pub rollback: bool,
    /// The boards' shared secret (the file their `serve --token-file` reads)
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// The MQTT broker the boards use: mqtt://HOST:PORT or mqtts://HOST:PORT
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "url",
        conflicts_with = "url",
        requires = "boards"
    )]
    pub broker: Option<String>,
    /// Board names, comma-separated (with --broker)
    #[arg(long, value_name = "A,B", value_delimiter = ',', requires = "broker")]
    pub boards: Vec<String>,
    /// Instead of a broker: a board's HTTP API, https://HOST:PORT (plain http:// only on this
    /// machine); repeat for more boards
    #[arg(long, value_name = "URL")]
    pub url: Vec<String>,
    /// Broker user name
    #[arg(long, value_name = "USER")]
    pub username: Option<String>,
    /// A file holding the broker password
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates for mqtts://
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Topic prefix the boards use
    #[arg(long, default_value = "edge-mnv2")]
    pub prefix: String,
    /// Seconds to wait for the boards' answers
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

#[derive(Args)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Class name: the frames go to DATA/<class>/
    #[arg(long)]
    pub class: String,
    /// How many frames to save
    #[arg(long, default_value_t = 20)]
    pub count: usize,
    /// Seconds between saved frames from a camera (so samples differ)
    #[arg(long, default_value_t = 0.5)]
    pub interval: f64,
    /// The labelled image folder (as given to finetune)
    pub data: PathBuf,
}
