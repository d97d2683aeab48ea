//! The fence-agents API (ClusterLabs fence-agents' `lib/fencing.py`), for tandem's agents
//! `fence_tandem_sbd` and `fence_tandem_ifmib`, so Pacemaker's fencer can drive them.
//!
//! Options arrive as `key=value` lines on stdin when there are no arguments (how the fencer
//! calls agents: `#` comments, quotes stripped, the last value wins, unknown keys warned about
//! and ignored) or as flags (`-o off`, `--action=off`, `--plug node1`). Actions: on, off,
//! reboot, status, list, list-status, monitor, metadata, validate-all. Exit 0 on success, 1 on
//! failure, 2 for `status` of something that is off. After on/off the status is polled every
//! second until it matches or `power_timeout` passes, as fencing.py does.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub use crate::Power;

/// The actions every agent offers, in fence-agents' order.
pub const ACTIONS: [&str; 9] = [
    "on",
    "off",
    "reboot",
    "status",
    "list",
    "list-status",
    "monitor",
    "metadata",
    "validate-all",
];
/// How often the status is polled after on/off.
pub const POWER_POLL: Duration = Duration::from_secs(1);
/// The most stdin an agent reads.
pub const MAX_STDIN_BYTES: u64 = 1 << 20;

/// A parameter's type, as the metadata's `<content type=...>`.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A flag.
    Boolean,
    /// Text.
    String,
    /// Seconds.
    Second,
    /// A number.
    Integer,
    /// One of these values.
    Select(&'static [&'static str]),
}

/// One parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// The key on stdin (`power_timeout`); the long flag is the same with dashes.
    pub name: &'static str,
    /// The short flag, if any.
    pub short: Option<char>,
    /// Its type.
    pub kind: Kind,
    /// The default, if any.
    pub default: Option<&'static str>,
    /// Whether an action that acts on a plug needs it.
    pub required: bool,
    /// An older name still accepted (`ipaddr` for `ip`), listed as deprecated in the metadata.
    pub alias: Option<&'static str>,
    /// One line of description.
    pub desc: &'static str,
}

impl Param {
    /// A string parameter.
    pub const fn string(name: &'static str, short: Option<char>, desc: &'static str) -> Param {
        Param {
            name,
            short,
            kind: Kind::String,
            default: None,
            required: false,
            alias: None,
            desc,
        }
    }

    /// With a default.
    pub const fn default(mut self, value: &'static str) -> Param {
        self.default = Some(value);
        self
    }

    /// Required.
    pub const fn required(mut self) -> Param {
        self.required = true;
        self
    }

    /// With another type.
    pub const fn kind(mut self, kind: Kind) -> Param {
        self.kind = kind;
        self
    }

    /// With an alias.
    pub const fn alias(mut self, alias: &'static str) -> Param {
        self.alias = Some(alias);
        self
    }

    fn long(&self) -> String {
        self.name.replace('_', "-")
    }

    fn getopt(&self) -> String {
        let value = match self.kind {
            Kind::Boolean => String::new(),
            _ => format!("=[{}]", self.name.trim_start_matches("snmp_")),
        };
        match self.short {
            Some(c) => format!("-{c}, --{}{value}", self.long()),
            None => format!("--{}{value}", self.long()),
        }
    }
}

/// The parameters every agent has (after fencing.py's `all_opt`).
pub fn common_params() -> Vec<Param> {
    vec![
        Param::string("action", Some('o'), "Fencing action").default("reboot"),
        Param::string(
            "plug",
            Some('n'),
            "Physical plug number on device, UUID or identification of machine",
        )
        .required()
        .alias("port"),
        Param::string(
            "power_timeout",
            None,
            "Test X seconds for status change after ON/OFF",
        )
        .kind(Kind::Second)
        .default("20"),
        Param::string("power_wait", None, "Wait X seconds after issuing ON/OFF")
            .kind(Kind::Second)
            .default("0"),
        Param::string("delay", None, "Wait X seconds before fencing is started")
            .kind(Kind::Second)
            .default("0"),
        Param::string("verbose", Some('v'), "Verbose mode").kind(Kind::Boolean),
        Param::string("quiet", Some('q'), "Disable logging to stderr").kind(Kind::Boolean),
    ]
}

/// An agent's description.
#[derive(Debug, Clone)]
pub struct AgentDef {
    /// The executable's name.
    pub name: &'static str,
    /// One line.
    pub shortdesc: &'static str,
    /// A paragraph.
    pub longdesc: &'static str,
    /// Where to read more.
    pub vendor_url: &'static str,
    /// All parameters (the agent's own and [`common_params`]).
    pub params: Vec<Param>,
}

/// Parsed options, keyed by parameter name, defaults filled in.
#[derive(Debug, Clone, Default)]
pub struct Options {
    values: BTreeMap<String, String>,
}

impl Options {
    /// A value, if set or defaulted.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// A required value.
    pub fn need(&self, name: &str) -> Result<&str, String> {
        self.get(name)
            .ok_or_else(|| format!("the parameter '{name}' is required"))
    }

    /// Seconds.
    pub fn seconds(&self, name: &str) -> Result<Duration, String> {
        let text = self.need(name)?;
        let secs: f64 = text
            .parse()
            .map_err(|_| format!("{name}: {text:?} is not a number of seconds"))?;
        Duration::try_from_secs_f64(secs).map_err(|_| format!("{name}: {text:?} is out of range"))
    }
}

impl AgentDef {
    fn find(&self, key: &str) -> Option<&Param> {
        let key = key.replace('-', "_");
        self.params
            .iter()
            .find(|p| p.name == key || p.alias == Some(key.as_str()))
    }

    fn set(&self, opts: &mut Options, param: &Param, value: &str) -> Result<(), String> {
        let value = match param.kind {
            Kind::Boolean => match value.to_ascii_lowercase().as_str() {
                "" | "1" | "yes" | "on" | "true" => "1",
                "0" | "no" | "off" | "false" => "0",
                _ => return Err(format!("{}: {value:?} is not a boolean", param.name)),
            }
            .to_string(),
            _ => value.to_string(),
        };
        opts.values.insert(param.name.to_string(), value);
        Ok(())
    }

    /// Parses `key=value` lines; returns the options and warnings about ignored lines.
    pub fn parse_stdin(&self, text: &str) -> Result<(Options, Vec<String>), String> {
        let mut opts = Options::default();
        let mut warnings = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            match self.find(key.trim()) {
                Some(p) => self.set(&mut opts, p, value)?,
                // Pacemaker always sends nodename; fencing.py ignores it silently.
                None if key.trim() == "nodename" => {}
                None => warnings.push(format!("ignoring unknown option '{line}'")),
            }
        }
        Ok((opts, warnings))
    }

    /// Parses command-line flags.
    pub fn parse_args(&self, args: &[String]) -> Result<Options, String> {
        let mut opts = Options::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (param, inline) = if let Some(long) = arg.strip_prefix("--") {
                let (name, value) = match long.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (long, None),
                };
                let p = self
                    .find(name)
                    .ok_or_else(|| format!("unknown option --{name}"))?;
                (p, value)
            } else if let Some(short) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
                let c = short.chars().next().expect("not empty");
                let p = self
                    .params
                    .iter()
                    .find(|p| p.short == Some(c))
                    .ok_or_else(|| format!("unknown option -{c}"))?;
                let rest = &short[c.len_utf8()..];
                (p, (!rest.is_empty()).then(|| rest.to_string()))
            } else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            let value = match (param.kind, inline) {
                (_, Some(v)) => v,
                (Kind::Boolean, None) => "1".to_string(),
                (_, None) => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("option --{} needs a value", param.long()))?,
            };
            self.set(&mut opts, param, &value)?;
        }
        Ok(opts)
    }

    /// Fills in defaults and checks types, choices and (for `needs_plug` actions) the required
    /// parameters.
    pub fn validate(&self, opts: &mut Options, needs_plug: bool) -> Result<(), String> {
        for p in &self.params {
            if let (Some(d), None) = (p.default, opts.get(p.name)) {
                opts.values.insert(p.name.to_string(), d.to_string());
            }
            let Some(v) = opts.get(p.name) else {
                if p.required && (needs_plug || p.name != "plug") {
                    return Err(format!("the parameter '{}' is required", p.name));
                }
                continue;
            };
            match p.kind {
                Kind::Integer if v.parse::<i64>().is_err() => {
                    return Err(format!("{}: {v:?} is not an integer", p.name))
                }
                Kind::Second if v.parse::<f64>().map_or(true, |s| !(0.0..1e9).contains(&s)) => {
                    return Err(format!("{}: {v:?} is not a number of seconds", p.name))
                }
                Kind::Select(choices) if !choices.contains(&v) => {
                    return Err(format!(
                        "{}: {v:?} is not one of {}",
                        p.name,
                        choices.join(", ")
                    ))
                }
                _ => {}
            }
        }
        let action = opts.need("action")?;
        if !ACTIONS.contains(&action) {
            return Err(format!(
                "unknown action {action:?} ({})",
                ACTIONS.join(", ")
            ));
        }
        Ok(())
    }

    /// The metadata XML (fence-agents' schema, `metadata.rng`).
    pub fn metadata(&self) -> String {
        let mut x = String::new();
        let _ = writeln!(x, "<?xml version=\"1.0\" ?>");
        let _ = writeln!(
            x,
            "<resource-agent name=\"{}\" shortdesc=\"{}\" >",
            esc(self.name),
            esc(self.shortdesc)
        );
        let _ = writeln!(x, "<longdesc>{}</longdesc>", esc(self.longdesc));
        let _ = writeln!(x, "<vendor-url>{}</vendor-url>", esc(self.vendor_url));
        let _ = writeln!(x, "<parameters>");
        for p in &self.params {
            param_xml(&mut x, p, p.name, p.alias.map(|a| ("obsoletes", a)));
            if let Some(alias) = p.alias {
                param_xml(&mut x, p, alias, Some(("deprecated", "1")));
            }
        }
        let _ = writeln!(x, "</parameters>");
        let _ = writeln!(x, "<actions>");
        for a in ACTIONS {
            let automatic = if a == "on" { " automatic=\"0\"" } else { "" };
            let _ = writeln!(x, "\t<action name=\"{a}\"{automatic} />");
        }
        let _ = writeln!(x, "</actions>");
        let _ = writeln!(x, "</resource-agent>");
        x
    }
}

fn param_xml(x: &mut String, p: &Param, name: &str, extra: Option<(&str, &str)>) {
    let extra = extra.map_or(String::new(), |(k, v)| format!(" {k}=\"{}\"", esc(v)));
    let _ = writeln!(
        x,
        "\t<parameter name=\"{}\" unique=\"0\" required=\"{}\"{extra}>",
        esc(name),
        u8::from(p.required)
    );
    let _ = writeln!(x, "\t\t<getopt mixed=\"{}\" />", esc(&p.getopt()));
    let default = p
        .default
        .map_or(String::new(), |d| format!(" default=\"{}\"", esc(d)));
    match p.kind {
        Kind::Select(choices) => {
            let _ = writeln!(x, "\t\t<content type=\"select\"{default} >");
            for c in choices {
                let _ = writeln!(x, "\t\t\t<option value=\"{}\" />", esc(c));
            }
            let _ = writeln!(x, "\t\t</content>");
        }
        kind => {
            let t = match kind {
                Kind::Boolean => "boolean",
                Kind::Second => "second",
                Kind::Integer => "integer",
                _ => "string",
            };
            let _ = writeln!(x, "\t\t<content type=\"{t}\"{default} />");
        }
    }
    let _ = writeln!(x, "\t\t<shortdesc lang=\"en\">{}</shortdesc>", esc(p.desc));
    let _ = writeln!(x, "\t</parameter>");
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One outlet for list and list-status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlet {
    /// What `plug` takes.
    pub id: String,
    /// A friendly name.
    pub alias: String,
    /// Its state, if known.
    pub status: Option<Power>,
}

/// What an agent's device does.
pub trait FenceDevice {
    /// The state of `plug`.
    fn status(&mut self, plug: &str) -> anyhow::Result<Power>;
    /// Switches `plug`.
    fn set(&mut self, plug: &str, want: Power) -> anyhow::Result<()>;
    /// A one-step reboot if the device has one (SBD's `reset`); `None` means off then on.
    fn reboot(&mut self, plug: &str) -> Option<anyhow::Result<()>> {
        let _ = plug;
        None
    }
    /// The outlets.
    fn list(&mut self) -> anyhow::Result<Vec<Outlet>>;
}

/// Runs an agent: parses its input, then does the action on the device `connect` opens.
pub fn run(
    def: &AgentDef,
    args: &[String],
    stdin: impl Read,
    connect: impl FnOnce(&Options) -> anyhow::Result<Box<dyn FenceDevice>>,
) -> ExitCode {
    let parsed = if args.is_empty() {
        let mut text = String::new();
        match stdin.take(MAX_STDIN_BYTES).read_to_string(&mut text) {
            Ok(_) => def.parse_stdin(&text).map(|(opts, warnings)| {
                for w in warnings {
                    eprintln!("{}: warning: {w}", def.name);
                }
                opts
            }),
            Err(e) => Err(format!("cannot read options from stdin: {e}")),
        }
    } else {
        def.parse_args(args)
    };
    let fail = |msg: &str| {
        eprintln!("{}: Failed: {msg}", def.name);
        ExitCode::FAILURE
    };
    let mut opts = match parsed {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    if opts.get("action").is_none() {
        opts.values.insert("action".into(), "reboot".into());
    }
    let action = opts.get("action").unwrap_or("reboot").to_string();
    if action == "metadata" {
        print!("{}", def.metadata());
        return ExitCode::SUCCESS;
    }
    let needs_plug = matches!(action.as_str(), "on" | "off" | "reboot" | "status");
    if let Err(e) = def.validate(&mut opts, needs_plug) {
        return fail(&e);
    }
    if action == "validate-all" {
        return ExitCode::SUCCESS;
    }
    match act(&action, &opts, connect) {
        Ok(code) => code,
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn act(
    action: &str,
    opts: &Options,
    connect: impl FnOnce(&Options) -> anyhow::Result<Box<dyn FenceDevice>>,
) -> anyhow::Result<ExitCode> {
    let seconds = |name| opts.seconds(name).map_err(anyhow::Error::msg);
    if matches!(action, "on" | "off" | "reboot") {
        std::thread::sleep(seconds("delay")?);
    }
    let mut dev = connect(opts)?;
    match action {
        "list" | "list-status" | "monitor" => {
            let outlets = dev.list()?;
            if action != "monitor" {
                for o in outlets {
                    if action == "list" {
                        println!("{},{}", o.id, o.alias);
                    } else {
                        let status = o.status.map_or("UNKNOWN", Power::upper);
                        println!("{},{},{status}", o.id, o.alias);
                    }
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let plug = opts.need("plug").map_err(anyhow::Error::msg)?.to_string();
    let status = dev.status(&plug)?;
    let timeout = seconds("power_timeout")?;
    let wait = seconds("power_wait")?;
    let switch = |dev: &mut Box<dyn FenceDevice>, want: Power| -> anyhow::Result<()> {
        dev.set(&plug, want)?;
        std::thread::sleep(wait);
        let start = Instant::now();
        loop {
            if dev.status(&plug)? == want {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                anyhow::bail!("timed out waiting to power {}", want.upper());
            }
            std::thread::sleep(POWER_POLL);
        }
    };
    match action {
        "status" => {
            println!("Status: {}", status.upper());
            Ok(if status == Power::Off {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        "on" | "off" => {
            let want = if action == "on" {
                Power::On
            } else {
                Power::Off
            };
            if status == want {
                println!("Success: Already {}", want.upper());
            } else {
                switch(&mut dev, want)?;
                println!(
                    "Success: Powered {}",
                    if want == Power::On { "ON" } else { "OFF" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        "reboot" => {
            match dev.reboot(&plug) {
                Some(r) => r?,
                None => {
                    if status != Power::Off {
                        switch(&mut dev, Power::Off)?;
                    }
                    // As fencing.py: the node is fenced once it was off; failing to power it
                    // back on is logged, not a fencing failure.
                    if let Err(e) = switch(&mut dev, Power::On) {
                        eprintln!("warning: {e:#}");
                    }
                }
            }
            println!("Success: Rebooted");
            Ok(ExitCode::SUCCESS)
        }
        other => anyhow::bail!("unknown action {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> AgentDef {
        let mut params = vec![
            Param::string("ip", Some('a'), "IP address")
                .required()
                .alias("ipaddr"),
            Param::string("snmp_version", Some('d'), "SNMP version")
                .kind(Kind::Select(&["1", "2c", "3"]))
                .default("2c"),
            Param::string("ipport", Some('u'), "Port")
                .kind(Kind::Integer)
                .default("161"),
        ];
        params.extend(common_params());
        AgentDef {
            name: "fence_test",
            shortdesc: "Test <agent>",
            longdesc: "A & B",
            vendor_url: "https://example.invalid",
            params,
        }
    }

    #[test]
    fn stdin_as_the_fencer_sends_it() {
        let text = "# from pacemaker\naction=off\nnodename=alpha\nport=swp1\nipaddr=\"10.0.0.1\"\n\
                    power-timeout=5\nverbose=yes\nbogus=1\naction=reboot\n";
        let (mut o, warnings) = def().parse_stdin(text).unwrap();
        assert_eq!(warnings, ["ignoring unknown option 'bogus=1'"]);
        def().validate(&mut o, true).unwrap();
        assert_eq!(o.get("action"), Some("reboot"), "the last value wins");
        assert_eq!(o.get("plug"), Some("swp1"));
        assert_eq!(o.get("ip"), Some("10.0.0.1"));
        assert_eq!(o.get("power_timeout"), Some("5"));
        assert_eq!(o.get("verbose"), Some("1"));
        assert_eq!(o.get("snmp_version"), Some("2c"));
        assert_eq!(o.seconds("power_timeout").unwrap(), Duration::from_secs(5));
    }

    #[test]
    fn flags() {
        let args: Vec<String> = [
            "-o",
            "status",
            "--ip=10.0.0.1",
            "-nswp1",
            "-v",
            "--snmp-version",
            "3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut o = def().parse_args(&args).unwrap();
        def().validate(&mut o, true).unwrap();
        assert_eq!(o.get("action"), Some("status"));
        assert_eq!(o.get("plug"), Some("swp1"));
        assert_eq!(o.get("verbose"), Some("1"));
        assert_eq!(o.get("snmp_version"), Some("3"));
        assert!(def().parse_args(&["--nope".to_string()]).is_err());
        assert!(def().parse_args(&["-o".to_string()]).is_err());
    }

    #[test]
    fn validation() {
        let d = def();
        let (mut o, _) = d.parse_stdin("action=off\nip=x\n").unwrap();
        assert!(d.validate(&mut o, true).unwrap_err().contains("'plug'"));
        let (mut o, _) = d.parse_stdin("action=list\nip=x\n").unwrap();
        assert!(d.validate(&mut o, false).is_ok(), "list needs no plug");
        let (mut o, _) = d
            .parse_stdin("action=off\nip=x\nplug=1\nsnmp_version=4\n")
            .unwrap();
        assert!(d.validate(&mut o, true).unwrap_err().contains("not one of"));
        let (mut o, _) = d.parse_stdin("action=explode\nip=x\nplug=1\n").unwrap();
        assert!(d
            .validate(&mut o, true)
            .unwrap_err()
            .contains("unknown action"));
        let (mut o, _) = d
            .parse_stdin("action=off\nip=x\nplug=1\nipport=x\n")
            .unwrap();
        assert!(d.validate(&mut o, true).is_err());
    }

    #[test]
    fn metadata_shape() {
        let x = def().metadata();
        assert!(x.starts_with("<?xml version=\"1.0\" ?>\n<resource-agent name=\"fence_test\" shortdesc=\"Test &lt;agent&gt;\" >"));
        assert!(x.contains("<longdesc>A &amp; B</longdesc>"));
        assert!(
            x.contains("<parameter name=\"ip\" unique=\"0\" required=\"1\" obsoletes=\"ipaddr\">")
        );
        assert!(
            x.contains("<parameter name=\"ipaddr\" unique=\"0\" required=\"1\" deprecated=\"1\">")
        );
        assert!(x.contains("<getopt mixed=\"-a, --ip=[ip]\" />"));
        assert!(x.contains("<content type=\"select\" default=\"2c\" >"));
        assert!(x.contains("<action name=\"validate-all\" />"));
    }

    struct Fake {
        power: Power,
        sets: usize,
    }

    impl FenceDevice for Fake {
        fn status(&mut self, _: &str) -> anyhow::Result<Power> {
            Ok(self.power)
        }
        fn set(&mut self, _: &str, want: Power) -> anyhow::Result<()> {
            self.sets += 1;
            self.power = want;
            Ok(())
        }
        fn list(&mut self) -> anyhow::Result<Vec<Outlet>> {
            Ok(vec![])
        }
    }

    #[test]
    fn actions_and_exit_codes() {
        let d = def();
        let code = |input: &str, power: Power| {
            let mut fake = Some(Box::new(Fake { power, sets: 0 }) as Box<dyn FenceDevice>);
            run(&d, &[], input.as_bytes(), |_| Ok(fake.take().unwrap()))
        };
        let base = "ip=x\nplug=1\n";
        assert_eq!(
            code(&format!("{base}action=status"), Power::Off),
            ExitCode::from(2)
        );
        assert_eq!(
            code(&format!("{base}action=status"), Power::On),
            ExitCode::SUCCESS
        );
        assert_eq!(
            code(&format!("{base}action=off"), Power::On),
            ExitCode::SUCCESS
        );
        assert_eq!(
            code(&format!("{base}action=reboot"), Power::On),
            ExitCode::SUCCESS
        );
        assert_eq!(
            code(&format!("{base}action=monitor"), Power::On),
            ExitCode::SUCCESS
        );
        assert_eq!(
            code(&format!("{base}action=validate-all"), Power::On),
            ExitCode::SUCCESS
        );
        assert_eq!(code("action=off\nip=x\n", Power::On), ExitCode::FAILURE);
        assert_eq!(
            code(&format!("{base}action=metadata"), Power::On),
            ExitCode::SUCCESS
        );
    }
}
