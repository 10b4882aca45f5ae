//! Model weight resolution: the local Hugging Face cache first, then the hub.
//!
//! [`HubResolver`] finds model files in the standard Hugging Face cache
//! layout (the one `huggingface_hub` and `huggingface-cli` write):
//!
//! ```text
//! {cache}/models--{org}--{name}/refs/{revision}          commit hash of the revision
//! {cache}/models--{org}--{name}/snapshots/{hash}/{file}  the file (often a symlink into blobs/)
//! {cache}/models--{org}--{name}/blobs/{etag}             the content
//! {cache}/models--{org}--{name}/.no_exist/{hash}/{file}  marker: the hub said the file does not exist
//! ```
//!
//! A file found there is used as it is, without asking the hub whether a
//! newer version exists. A file that is not there is downloaded with
//! [`hf-hub`](https://docs.rs/hf-hub) into the same layout, unless the
//! resolver is offline (`HF_HUB_OFFLINE=1` or [`HubResolver::with_offline`]).
//! When files cannot be had (offline, or the hub cannot be reached) the error
//! is one [`Error::MissingModelFiles`] that lists every missing file of every
//! repository asked for, with the `huggingface-cli download` commands that
//! fetch them.
//!
//! Local folders and single files given by the user instead of a repository
//! are described by [`WeightSource`]; [`resolve_in_dir`] gives the same kind
//! of clear error for a local folder.
//!
//! File names are checked before any path is built: absolute names, `..`,
//! `.`, empty components and backslashes are refused, so a name can never
//! lead out of the snapshot (or local) folder. Checking the file *format*
//! (refusing pickles) is the loader's job, not this module's.
//!
//! Nothing here prints. Downloads report progress through the
//! [`ProgressHook`] given to [`HubResolver::with_progress`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The hub used when neither `HF_ENDPOINT` nor [`HubResolver::with_endpoint`]
/// says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The revision used when none is given (`org/name` without `@rev`).
pub const DEFAULT_REVISION: &str = "main";

/// The values of `HF_HUB_OFFLINE` that mean "offline" (compared without
/// regard to case), as in `huggingface_hub`.
const TRUE_VALUES: [&str; 4] = ["1", "true", "yes", "on"];

/// Files wanted from one repository of the hub, at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFiles {
    /// Repository id, `org/name` (e.g. `stable-diffusion-v1-5/stable-diffusion-v1-5`).
    pub repo_id: String,
    /// A branch or tag name (`main`, `refs/pr/1`) or a full 40-hex commit hash.
    pub revision: String,
    /// Files that must all be found, as paths inside the repository
    /// (`unet/config.json`).
    pub files: Vec<String>,
    /// Groups of alternatives, each resolving to one file: the preferred
    /// name first (e.g. the fp16 variant, then the full-precision file).
    ///
    /// Rule: the first alternative already in the cache wins, without
    /// network. Otherwise, online, the alternatives are downloaded in order
    /// and the first one the hub has wins. Offline (or when the hub cannot be
    /// reached) "not in the cache" and "does not exist" look the same, so the
    /// group is reported missing under its preferred name — unless the cache
    /// records (`.no_exist/`) that the hub lacks it, in which case the first
    /// alternative not known to be absent is reported.
    pub one_of: Vec<Vec<String>>,
    /// What else the user can do, ending the missing-files message after
    /// "or ", e.g. `pass --sd DIR with a local diffusers folder`.
    pub hint: Option<String>,
}

impl RepoFiles {
    /// Required `files` of `repo_id` at `revision`, no alternatives, no hint.
    pub fn new(repo_id: impl Into<String>, revision: impl Into<String>, files: &[&str]) -> Self {
        Self {
            repo_id: repo_id.into(),
            revision: revision.into(),
            files: files.iter().map(|f| f.to_string()).collect(),
            one_of: Vec::new(),
            hint: None,
        }
    }

    /// Adds a group of alternatives (preferred first); see [`RepoFiles::one_of`].
    pub fn with_one_of(mut self, alternatives: &[&str]) -> Self {
        self.one_of
            .push(alternatives.iter().map(|f| f.to_string()).collect());
        self
    }

    /// Sets the hint that ends the missing-files message; see [`RepoFiles::hint`].
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Every group to resolve: each required file as a group of one, then
    /// the alternatives. The result of resolving has one path per group, in
    /// this order.
    fn groups(&self) -> Vec<Vec<String>> {
        self.files
            .iter()
            .map(|f| vec![f.clone()])
            .chain(self.one_of.iter().cloned())
            .collect()
    }
}

/// Why model files could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingReason {
    /// `HF_HUB_OFFLINE` is set to a true value (kept here as given).
    OfflineEnv(String),
    /// The caller asked for offline mode ([`HubResolver::with_offline`]).
    OfflineFlag,
    /// The hub could not be reached (DNS, connection refused, TLS, proxy...).
    Unreachable {
        /// The endpoint tried.
        endpoint: String,
        /// What failed, from the HTTP client.
        detail: String,
    },
}

impl fmt::Display for MissingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MissingReason::OfflineEnv(value) => write!(f, "offline: HF_HUB_OFFLINE={value}"),
            MissingReason::OfflineFlag => write!(f, "offline mode"),
            MissingReason::Unreachable { endpoint, detail } => {
                write!(f, "cannot reach {endpoint}: {detail}")
            }
        }
    }
}

/// Every model file that could not be had, by repository; the payload of
/// [`Error::MissingModelFiles`].
///
/// Renders as a few lines: the reason, one line per repository listing its
/// missing files, the `huggingface-cli download` command for each, where to
/// copy the cache, and the callers' hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingModelFiles {
    /// Why the files could not be downloaded.
    pub reason: MissingReason,
    /// The missing files (in [`RepoFiles::files`]; `one_of` is empty), with
    /// the hints of the requests they came from.
    pub missing: Vec<RepoFiles>,
    /// The cache folder that was searched.
    pub cache_dir: PathBuf,
}

impl fmt::Display for MissingModelFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "missing model files ({}):", self.reason)?;
        for repo in &self.missing {
            writeln!(
                f,
                "  {} @ {}: {}",
                repo.repo_id,
                repo.revision,
                repo.files.join(", ")
            )?;
        }
        writeln!(f, "Download them on a machine with network access with")?;
        for repo in &self.missing {
            write!(
                f,
                "  huggingface-cli download {}",
                shell_word(&repo.repo_id)
            )?;
            if repo.revision != DEFAULT_REVISION {
                write!(f, " --revision {}", shell_word(&repo.revision))?;
            }
            for file in &repo.files {
                write!(f, " {}", shell_word(file))?;
            }
            writeln!(f)?;
        }
        write!(
            f,
            "and copy ~/.cache/huggingface/hub to this machine (as {})",
            self.cache_dir.display()
        )?;
        let mut hints: Vec<&str> = Vec::new();
        for hint in self.missing.iter().filter_map(|r| r.hint.as_deref()) {
            if !hints.contains(&hint) {
                hints.push(hint);
            }
        }
        for hint in hints {
            write!(f, ", or {hint}")?;
        }
        write!(f, ".")
    }
}

/// `s` as one shell word: unchanged when it holds only safe characters,
/// single-quoted otherwise.
fn shell_word(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./@=:+,".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// One step of a download, given to the [`ProgressHook`].
///
/// For each file: one `Started`, any number of `Progress`, one `Finished`
/// (no `Finished` when the download fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadEvent<'a> {
    /// A download begins.
    Started {
        /// Repository id.
        repo_id: &'a str,
        /// File name inside the repository.
        file: &'a str,
        /// Size of the file in bytes.
        total_bytes: u64,
    },
    /// Bytes arrived.
    Progress {
        /// Repository id.
        repo_id: &'a str,
        /// File name inside the repository.
        file: &'a str,
        /// Bytes of the file downloaded so far (cumulative).
        downloaded_bytes: u64,
        /// Size of the file in bytes.
        total_bytes: u64,
    },
    /// The whole file arrived.
    Finished {
        /// Repository id.
        repo_id: &'a str,
        /// File name inside the repository.
        file: &'a str,
    },
}

/// Receives [`DownloadEvent`]s, e.g. to drive indicatif bars in the CLI.
pub type ProgressHook = Arc<dyn Fn(DownloadEvent<'_>) + Send + Sync>;

/// Adapts a [`ProgressHook`] to hf-hub's progress trait.
struct HookProgress<'a> {
    hook: Option<&'a ProgressHook>,
    repo_id: &'a str,
    file: &'a str,
    total: u64,
    done: u64,
    started: bool,
}

impl hf_hub::api::Progress for HookProgress<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        // hf-hub calls init again when it (re)starts the transfer, followed by
        // an update with the bytes already on disk: restart the count.
        self.total = size as u64;
        self.done = 0;
        if !self.started {
            self.started = true;
            if let Some(hook) = self.hook {
                hook(DownloadEvent::Started {
                    repo_id: self.repo_id,
                    file: self.file,
                    total_bytes: self.total,
                });
            }
        }
    }

    fn update(&mut self, size: usize) {
        self.done = self.done.saturating_add(size as u64);
        if let Some(hook) = self.hook {
            hook(DownloadEvent::Progress {
                repo_id: self.repo_id,
                file: self.file,
                downloaded_bytes: self.done,
                total_bytes: self.total,
            });
        }
    }

    fn finish(&mut self) {
        if let Some(hook) = self.hook {
            hook(DownloadEvent::Finished {
                repo_id: self.repo_id,
                file: self.file,
            });
        }
    }
}

/// How the resolver came to be offline.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Offline {
    Env(String),
    Flag,
}

/// Finds model files in the Hugging Face cache and downloads the missing ones.
///
/// Build it with [`HubResolver::from_env`] (what the CLI does) or
/// [`HubResolver::new`], then adjust with the `with_*` methods. Cloning is
/// cheap; the resolver holds no connection.
#[derive(Clone)]
pub struct HubResolver {
    cache_dir: PathBuf,
    offline: Option<Offline>,
    token: Option<String>,
    endpoint: String,
    progress: Option<ProgressHook>,
}

impl fmt::Debug for HubResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token.
        f.debug_struct("HubResolver")
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("endpoint", &self.endpoint)
            .field("progress", &self.progress.as_ref().map(|_| "<hook>"))
            .finish()
    }
}

/// The outcome of trying to download one file.
enum Fetch {
    Got(PathBuf),
    /// The hub says the file does not exist at this revision.
    Absent,
    /// The hub could not be reached: the reason to report.
    Unreachable(MissingReason),
}

impl HubResolver {
    /// A resolver using the cache folder `cache_dir` (the `hub` folder, the
    /// one holding `models--*`), online, without token, against
    /// [`DEFAULT_ENDPOINT`]. Reads no environment variable.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            offline: None,
            token: None,
            endpoint: DEFAULT_ENDPOINT.to_string(),
            progress: None,
        }
    }

    /// A resolver configured from the process environment, like
    /// `huggingface_hub`; see [`HubResolver::from_env_vars`].
    pub fn from_env() -> Result<Self> {
        Self::from_env_vars(|name| std::env::var(name).ok())
    }

    /// A resolver configured from the variables `var` returns (`None` or an
    /// empty value: unset). Tests pass a map here instead of touching the
    /// process environment.
    ///
    /// * cache folder: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    ///   `~/.cache/huggingface/hub` (home from `HOME`, else `USERPROFILE`);
    /// * offline: `HF_HUB_OFFLINE` = `1`, `true`, `yes` or `on` (any case);
    /// * token: `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the first line
    ///   of the file `HF_TOKEN_PATH`, else of `$HF_HOME/token`, else of
    ///   `~/.cache/huggingface/token` (an unreadable or empty file: no token);
    /// * endpoint: `HF_ENDPOINT`, else [`DEFAULT_ENDPOINT`].
    ///
    /// Fails only when no cache folder can be named (none of `HF_HUB_CACHE`,
    /// `HF_HOME`, `HOME`, `USERPROFILE` is set).
    pub fn from_env_vars<F>(var: F) -> Result<Self>
    where
        F: Fn(&str) -> Option<String>,
    {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let home = var("HOME")
            .or_else(|| var("USERPROFILE"))
            .map(PathBuf::from);
        let hf_home = var("HF_HOME")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".cache").join("huggingface")));
        let cache_dir = match var("HF_HUB_CACHE") {
            Some(dir) => PathBuf::from(dir),
            None => match &hf_home {
                Some(hf_home) => hf_home.join("hub"),
                None => {
                    return Err(Error::InvalidArgument(
                        "cannot locate the Hugging Face cache: none of HF_HUB_CACHE, HF_HOME, \
                         HOME is set; set HF_HUB_CACHE to the cache folder"
                            .to_string(),
                    ))
                }
            },
        };
        let offline = var("HF_HUB_OFFLINE")
            .filter(|v| TRUE_VALUES.iter().any(|t| v.trim().eq_ignore_ascii_case(t)))
            .map(|v| Offline::Env(v.trim().to_string()));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .map(|t| t.trim().to_string())
            .or_else(|| {
                let path = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .or_else(|| hf_home.as_ref().map(|h| h.join("token")))?;
                read_token(&path)
            });
        let endpoint = var("HF_ENDPOINT")
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Ok(Self {
            cache_dir,
            offline,
            token,
            endpoint,
            progress: None,
        })
    }

    /// Uses `cache_dir` as the cache folder (the `hub` folder).
    pub fn with_cache_dir(mut self, cache_dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = cache_dir.into();
        self
    }

    /// `true`: never touch the network (as `HF_HUB_OFFLINE=1`, but reported
    /// as "offline mode"); `false`: download missing files, even when
    /// `HF_HUB_OFFLINE` was set.
    pub fn with_offline(mut self, offline: bool) -> Self {
        self.offline = offline.then_some(Offline::Flag);
        self
    }

    /// Sends `token` (a Hugging Face access token) with downloads, for gated
    /// or private repositories; `None` sends none.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        self
    }

    /// Downloads from `endpoint` (e.g. a mirror) instead of [`DEFAULT_ENDPOINT`].
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into().trim().trim_end_matches('/').to_string();
        self
    }

    /// Reports download progress to `hook`.
    pub fn with_progress(mut self, hook: ProgressHook) -> Self {
        self.progress = Some(hook);
        self
    }

    /// The cache folder searched and written to.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Whether the resolver never touches the network.
    pub fn is_offline(&self) -> bool {
        self.offline.is_some()
    }

    /// The hub downloads come from.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether a token will be sent with downloads.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Where `file` of `repo_id` at `revision` is in the cache, if it is
    /// there; never touches the network. Fails only on a refused name.
    pub fn cached_path(
        &self,
        repo_id: &str,
        revision: &str,
        file: &str,
    ) -> Result<Option<PathBuf>> {
        check_repo_id(repo_id)?;
        check_revision(revision)?;
        check_file_name(file)?;
        Ok(self.lookup(repo_id, revision, file))
    }

    /// Paths of `files` of `repo_id` at `revision` (a branch, tag or full
    /// commit hash), in order: from the cache, else downloaded (unless
    /// offline). See [`HubResolver::resolve_many`] for the errors; to give a
    /// hint or alternatives, or to ask several repositories at once with one
    /// error, use that.
    pub fn resolve(&self, repo_id: &str, revision: &str, files: &[&str]) -> Result<Vec<PathBuf>> {
        let request = RepoFiles::new(repo_id, revision, files);
        let mut all = self.resolve_many(std::slice::from_ref(&request))?;
        Ok(all.pop().unwrap_or_default())
    }

    /// The path of the first of `alternatives` that exists (preferred
    /// first), by the rule of [`RepoFiles::one_of`].
    pub fn resolve_first(
        &self,
        repo_id: &str,
        revision: &str,
        alternatives: &[&str],
    ) -> Result<PathBuf> {
        let request = RepoFiles::new(repo_id, revision, &[]).with_one_of(alternatives);
        let all = self.resolve_many(std::slice::from_ref(&request))?;
        all.into_iter()
            .flatten()
            .next()
            .ok_or_else(|| Error::InvalidArgument("no file names given to resolve_first".into()))
    }

    /// Paths for every request: for each, one path per required file (in
    /// order), then one per group of alternatives.
    ///
    /// Files already in the cache are used without network. The others are
    /// downloaded unless offline. Errors:
    /// * [`Error::ModelFileName`]: a repository id, revision or file name is
    ///   refused (checked for all requests before anything else);
    /// * [`Error::MissingModelFiles`]: offline, or the hub cannot be
    ///   reached — one error listing every missing file of every request
    ///   (after the first network failure no further download is tried);
    /// * [`Error::Download`]: the hub answered but refused: the file,
    ///   revision or repository does not exist, access is denied (gated or
    ///   private: set `HF_TOKEN`), or writing the cache failed.
    pub fn resolve_many(&self, requests: &[RepoFiles]) -> Result<Vec<Vec<PathBuf>>> {
        let groups: Vec<Vec<Vec<String>>> = requests.iter().map(RepoFiles::groups).collect();
        for (request, groups) in requests.iter().zip(&groups) {
            check_repo_id(&request.repo_id)?;
            check_revision(&request.revision)?;
            for group in groups {
                if group.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "an empty group of alternatives was asked of {}",
                        request.repo_id
                    )));
                }
                for file in group {
                    check_file_name(file)?;
                }
            }
        }

        // The cache first: the first alternative found wins.
        let mut found: Vec<Vec<Option<PathBuf>>> = requests
            .iter()
            .zip(&groups)
            .map(|(request, groups)| {
                groups
                    .iter()
                    .map(|group| {
                        group
                            .iter()
                            .find_map(|file| self.lookup(&request.repo_id, &request.revision, file))
                    })
                    .collect()
            })
            .collect();

        let mut reason = self.offline_reason();
        if reason.is_none() && found.iter().flatten().any(Option::is_none) {
            let api = self.api()?;
            'requests: for ((request, groups), found) in
                requests.iter().zip(&groups).zip(&mut found)
            {
                for (group, slot) in groups.iter().zip(found.iter_mut()) {
                    if slot.is_some() {
                        continue;
                    }
                    for file in group {
                        match self.fetch(&api, request, file)? {
                            Fetch::Got(path) => {
                                *slot = Some(path);
                                break;
                            }
                            Fetch::Absent => continue,
                            Fetch::Unreachable(why) => {
                                reason = Some(why);
                                break 'requests;
                            }
                        }
                    }
                    if slot.is_none() {
                        // Online, and the hub has none of the alternatives.
                        let what = if group.len() == 1 {
                            "the file does not exist in this repository at this revision"
                                .to_string()
                        } else {
                            "none of these alternatives exists in this repository at this revision"
                                .to_string()
                        };
                        return Err(Error::Download {
                            repo_id: request.repo_id.clone(),
                            revision: request.revision.clone(),
                            file: group.join(" or "),
                            reason: what,
                        });
                    }
                }
            }
        }

        let mut missing = Vec::new();
        for ((request, groups), found) in requests.iter().zip(&groups).zip(&found) {
            let files: Vec<String> = groups
                .iter()
                .zip(found)
                .filter(|(_, slot)| slot.is_none())
                .map(|(group, _)| self.preferred(request, group))
                .collect();
            if !files.is_empty() {
                missing.push(RepoFiles {
                    repo_id: request.repo_id.clone(),
                    revision: request.revision.clone(),
                    files,
                    one_of: Vec::new(),
                    hint: request.hint.clone(),
                });
            }
        }
        if !missing.is_empty() {
            return Err(Error::MissingModelFiles(Box::new(MissingModelFiles {
                // A file can only be left missing offline or after a network
                // failure, both of which set `reason`; the fallback is unused.
                reason: reason.unwrap_or(MissingReason::OfflineFlag),
                missing,
                cache_dir: self.cache_dir.clone(),
            })));
        }
        // Every slot is `Some` (checked just above), so flattening keeps one
        // path per group.
        Ok(found
            .into_iter()
            .map(|paths| paths.into_iter().flatten().collect())
            .collect())
    }

    /// Paths of `files` that exist: `None` for a file the hub does not have
    /// (e.g. an fp16 variant a repository lacks).
    ///
    /// Rule: a cached file is `Some`. Offline, or when the hub cannot be
    /// reached, an uncached file is `None`: "not in the cache" and "does not
    /// exist" cannot be told apart then, so ask for required files with
    /// [`HubResolver::resolve_many`] (or alternatives with
    /// [`RepoFiles::one_of`]), which report them instead. Online, a file the
    /// hub lacks is `None`; any other refusal (repository or revision not
    /// found, access denied) is an [`Error::Download`].
    pub fn resolve_optional(
        &self,
        repo_id: &str,
        revision: &str,
        files: &[&str],
    ) -> Result<Vec<Option<PathBuf>>> {
        check_repo_id(repo_id)?;
        check_revision(revision)?;
        for file in files {
            check_file_name(file)?;
        }
        let request = RepoFiles::new(repo_id, revision, &[]);
        let mut online = self.offline.is_none();
        let mut api = None;
        let mut out = Vec::with_capacity(files.len());
        for file in files {
            if let Some(path) = self.lookup(repo_id, revision, file) {
                out.push(Some(path));
                continue;
            }
            if !online || self.known_absent(repo_id, revision, file) {
                out.push(None);
                continue;
            }
            let api = match &api {
                Some(api) => api,
                None => api.insert(self.api()?),
            };
            out.push(match self.fetch(api, &request, file)? {
                Fetch::Got(path) => Some(path),
                Fetch::Absent => None,
                Fetch::Unreachable(_) => {
                    online = false;
                    None
                }
            });
        }
        Ok(out)
    }

    fn offline_reason(&self) -> Option<MissingReason> {
        match &self.offline {
            Some(Offline::Env(value)) => Some(MissingReason::OfflineEnv(value.clone())),
            Some(Offline::Flag) => Some(MissingReason::OfflineFlag),
            None => None,
        }
    }

    /// `cache/models--org--name`.
    fn repo_dir(&self, repo_id: &str) -> PathBuf {
        self.cache_dir
            .join(format!("models--{}", repo_id.replace('/', "--")))
    }

    /// The commit hash `revision` stands for in the cache, if known.
    fn commit(&self, repo_id: &str, revision: &str) -> Option<String> {
        let repo_dir = self.repo_dir(repo_id);
        if is_commit_hash(revision) && repo_dir.join("snapshots").join(revision).is_dir() {
            return Some(revision.to_string());
        }
        let text = std::fs::read_to_string(repo_dir.join("refs").join(revision)).ok()?;
        let hash = text.trim();
        // A ref file holding anything but a plain name is ignored rather
        // than joined to a path.
        let plain = !hash.is_empty()
            && hash
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        plain.then(|| hash.to_string())
    }

    /// The cached path of a (checked) file name, if the file is there.
    fn lookup(&self, repo_id: &str, revision: &str, file: &str) -> Option<PathBuf> {
        let hash = self.commit(repo_id, revision)?;
        let path = self
            .repo_dir(repo_id)
            .join("snapshots")
            .join(hash)
            .join(file);
        // `is_file` follows the symlink into blobs/: a dangling link is missing.
        path.is_file().then_some(path)
    }

    /// Whether the cache records that the hub lacks this (checked) file.
    fn known_absent(&self, repo_id: &str, revision: &str, file: &str) -> bool {
        self.commit(repo_id, revision).is_some_and(|hash| {
            self.repo_dir(repo_id)
                .join(".no_exist")
                .join(hash)
                .join(file)
                .exists()
        })
    }

    /// Records, as `huggingface_hub` does, that the hub lacks a (checked)
    /// file at `commit`, so that later offline runs know it. Best effort: a
    /// failure to write the marker only costs a network request next time.
    fn record_absent(&self, request: &RepoFiles, file: &str, commit: Option<&str>) {
        let Some(commit) = commit.map(str::trim).filter(|c| is_commit_hash(c)) else {
            return;
        };
        let marker = self
            .repo_dir(&request.repo_id)
            .join(".no_exist")
            .join(commit)
            .join(file);
        if let Some(parent) = marker.parent() {
            if std::fs::create_dir_all(parent).is_ok() {
                let _ = std::fs::write(&marker, b"");
            }
        }
    }

    /// The name to report for a missing group: the first alternative not
    /// known to be absent, else the first.
    fn preferred(&self, request: &RepoFiles, group: &[String]) -> String {
        group
            .iter()
            .find(|f| !self.known_absent(&request.repo_id, &request.revision, f))
            .or(group.first())
            .cloned()
            .unwrap_or_default()
    }

    fn api(&self) -> Result<hf_hub::api::sync::Api> {
        hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(self.cache_dir.clone()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(false)
            .with_user_agent("easel", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| {
                Error::InvalidArgument(format!("cannot set up the Hugging Face client: {e}"))
            })
    }

    /// Downloads one (checked) file into the cache.
    fn fetch(
        &self,
        api: &hf_hub::api::sync::Api,
        request: &RepoFiles,
        file: &str,
    ) -> Result<Fetch> {
        let repo = api.repo(hf_hub::Repo::with_revision(
            request.repo_id.clone(),
            hf_hub::RepoType::Model,
            request.revision.clone(),
        ));
        let progress = HookProgress {
            hook: self.progress.as_ref(),
            repo_id: &request.repo_id,
            file,
            total: 0,
            done: 0,
            started: false,
        };
        let error = match repo.download_with_progress(file, progress) {
            Ok(path) => return Ok(Fetch::Got(path)),
            Err(error) => error,
        };
        let download_error = |reason: String| Error::Download {
            repo_id: request.repo_id.clone(),
            revision: request.revision.clone(),
            file: file.to_string(),
            reason,
        };
        let mut error = error;
        while let hf_hub::api::sync::ApiError::TooManyRetries(inner) = error {
            error = *inner;
        }
        let request_error = match error {
            hf_hub::api::sync::ApiError::RequestError(e) => *e,
            other => return Err(download_error(other.to_string())),
        };
        match request_error {
            ureq::Error::Transport(transport) => {
                let mut detail = transport.kind().to_string().to_lowercase();
                if let Some(message) = transport.message() {
                    detail.push_str(&format!(": {message}"));
                }
                if let Some(source) = std::error::Error::source(&transport) {
                    detail.push_str(&format!(": {source}"));
                }
                Ok(Fetch::Unreachable(MissingReason::Unreachable {
                    endpoint: self.endpoint.clone(),
                    detail,
                }))
            }
            ureq::Error::Status(status, response) => {
                let code = response
                    .header("x-error-code")
                    .unwrap_or_default()
                    .to_string();
                let reason = match (status, code.as_str()) {
                    (404, "RevisionNotFound") => {
                        format!("revision {:?} not found (HTTP 404)", request.revision)
                    }
                    (_, "RepoNotFound") => format!(
                        "repository not found (HTTP {status}); if it is private or gated, set \
                         HF_TOKEN to a token with access"
                    ),
                    (404, _) => {
                        self.record_absent(request, file, response.header("x-repo-commit"));
                        return Ok(Fetch::Absent);
                    }
                    (401 | 403, _) => format!(
                        "access denied (HTTP {status}): the repository is gated or private; accept \
                         its terms on the hub and set HF_TOKEN to a token with access"
                    ),
                    _ => format!("the hub answered HTTP {status}"),
                };
                Err(download_error(reason))
            }
        }
    }
}

/// Reads a token file: its first non-empty line, trimmed.
fn read_token(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Whether `s` is a full commit hash (40 lowercase hex digits).
fn is_commit_hash(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn refuse(name: &str, reason: &str) -> Error {
    Error::ModelFileName {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

/// Refuses file names that could lead out of the folder they are joined to:
/// absolute, `..`, `.`, empty components, backslashes, colons (Windows
/// drives and streams), NUL.
fn check_file_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(refuse(name, "the file name is empty"));
    }
    if name.starts_with('/') {
        return Err(refuse(
            name,
            "absolute paths are not allowed; give a path inside the model folder",
        ));
    }
    if name.contains(['\\', ':', '\0']) {
        return Err(refuse(
            name,
            "file names may not contain '\\', ':' or NUL; use '/' between folders",
        ));
    }
    for part in name.split('/') {
        match part {
            ".." => return Err(refuse(name, "'..' would lead out of the model folder")),
            "." | "" => return Err(refuse(name, "empty or '.' path components are not allowed")),
            _ => {}
        }
    }
    Ok(())
}

/// Refuses revisions that could lead out of `refs/` or `snapshots/`.
fn check_revision(revision: &str) -> Result<()> {
    let bad = revision.is_empty()
        || revision.starts_with('/')
        || revision.contains(['\\', ':', '\0'])
        || revision
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        return Err(refuse(
            revision,
            "not a usable revision: give a branch or tag name (main, refs/pr/1) or a commit hash",
        ));
    }
    Ok(())
}

/// Accepts `name` or `org/name` made of ASCII letters, digits, `-`, `_`, `.`
/// (not starting with `-` or `.`, no `--` or `..`), as the hub does.
fn check_repo_id(repo_id: &str) -> Result<()> {
    if !is_repo_id(repo_id, false) {
        return Err(refuse(
            repo_id,
            "not a Hugging Face repository id: expected org/name of letters, digits, '-', '_', '.'",
        ));
    }
    Ok(())
}

fn is_repo_id(repo_id: &str, require_org: bool) -> bool {
    let parts: Vec<&str> = repo_id.split('/').collect();
    let count_ok = if require_org {
        parts.len() == 2
    } else {
        matches!(parts.len(), 1 | 2)
    };
    count_ok
        && repo_id.len() <= 96 * 2 + 1
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 96
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
                && !p.contains("--")
                && !p.contains("..")
        })
}

/// Where a model's weights come from, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightSource {
    /// A hub repository at a revision, resolved through the cache.
    Hub {
        /// `org/name`.
        repo_id: String,
        /// Branch, tag or commit hash ([`DEFAULT_REVISION`] when not given).
        revision: String,
    },
    /// A local folder in the hub's layout (e.g. a diffusers folder).
    LocalDir(PathBuf),
    /// A single local weight file (e.g. an LDM `.safetensors` checkpoint).
    SingleFile(PathBuf),
}

impl WeightSource {
    /// Reads a model source:
    ///
    /// 1. a path that exists is a [`WeightSource::LocalDir`] or
    ///    [`WeightSource::SingleFile`] (an existing folder named like
    ///    `org/name` is local);
    /// 2. otherwise `org/name` or `org/name@revision` is a
    ///    [`WeightSource::Hub`];
    /// 3. otherwise, e.g. a path-looking string (`./x`, `/x`, `~/x`,
    ///    `a/b/c`, `x.safetensors`) that does not exist, an error naming it.
    pub fn parse(s: &str) -> Result<Self> {
        let given = s;
        let err = |reason: &str| Error::ModelSource {
            given: given.to_string(),
            reason: reason.to_string(),
        };
        if s.trim().is_empty() {
            return Err(err(
                "empty; give a folder, a weight file or a hub repo id org/name[@revision]",
            ));
        }
        let path = Path::new(s);
        if let Ok(meta) = std::fs::metadata(path) {
            return Ok(if meta.is_dir() {
                WeightSource::LocalDir(path.to_path_buf())
            } else {
                WeightSource::SingleFile(path.to_path_buf())
            });
        }
        let (repo_id, revision) = match s.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (s, None),
        };
        let looks_like_path = s.starts_with(['/', '.', '~', '\\'])
            || s.contains('\\')
            || (s.len() >= 2 && s.as_bytes()[1] == b':')
            || repo_id.split('/').count() > 2
            || has_weight_extension(repo_id);
        if looks_like_path {
            return Err(err("no such file or folder"));
        }
        if !is_repo_id(repo_id, true) {
            return Err(err(
                "not an existing file or folder, nor a hub repo id org/name[@revision]",
            ));
        }
        let revision = match revision {
            None => DEFAULT_REVISION.to_string(),
            Some(rev) => {
                if check_revision(rev).is_err() {
                    return Err(err(
                        "the revision after '@' must be a branch or tag name or a commit hash",
                    ));
                }
                rev.to_string()
            }
        };
        Ok(WeightSource::Hub {
            repo_id: repo_id.to_string(),
            revision,
        })
    }
}

/// Whether the last component of `s` ends like a weight or config file.
fn has_weight_extension(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    [
        ".safetensors",
        ".ckpt",
        ".bin",
        ".pt",
        ".pth",
        ".json",
        ".onnx",
        ".gguf",
    ]
    .iter()
    .any(|ext| lower.ends_with(ext))
}

impl FromStr for WeightSource {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for WeightSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightSource::Hub { repo_id, revision } => write!(f, "{repo_id}@{revision}"),
            WeightSource::LocalDir(p) | WeightSource::SingleFile(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Checks that `dir` is a folder and returns the checked names' paths.
fn dir_paths(dir: &Path, files: &[&str]) -> Result<Vec<PathBuf>> {
    for file in files {
        check_file_name(file)?;
    }
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(Error::ModelSource {
                given: dir.display().to_string(),
                reason: "not a folder".to_string(),
            })
        }
        Err(e) => {
            return Err(Error::ModelSource {
                given: dir.display().to_string(),
                reason: if e.kind() == std::io::ErrorKind::NotFound {
                    "no such folder".to_string()
                } else {
                    format!("cannot read the folder: {e}")
                },
            })
        }
    }
    Ok(files.iter().map(|f| dir.join(f)).collect())
}

/// Paths of `files` inside the local folder `dir` (names as in a hub
/// repository, `unet/config.json`). Every missing file is listed in one
/// [`Error::MissingLocalFiles`]; a refused name is an
/// [`Error::ModelFileName`]; a `dir` that is not a folder an
/// [`Error::ModelSource`].
pub fn resolve_in_dir(dir: &Path, files: &[&str]) -> Result<Vec<PathBuf>> {
    let paths = dir_paths(dir, files)?;
    let missing: Vec<String> = files
        .iter()
        .zip(&paths)
        .filter(|(_, p)| !p.is_file())
        .map(|(f, _)| f.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(Error::MissingLocalFiles {
            dir: dir.to_path_buf(),
            files: missing,
        });
    }
    Ok(paths)
}

/// Paths of `files` inside `dir`, `None` for those that are not there.
pub fn resolve_optional_in_dir(dir: &Path, files: &[&str]) -> Result<Vec<Option<PathBuf>>> {
    let paths = dir_paths(dir, files)?;
    Ok(paths
        .into_iter()
        .map(|p| p.is_file().then_some(p))
        .collect())
}

/// The path of the first of `alternatives` (preferred first) inside `dir`;
/// when none is there, an [`Error::MissingLocalFiles`] naming the preferred one.
pub fn resolve_first_in_dir(dir: &Path, alternatives: &[&str]) -> Result<PathBuf> {
    let paths = dir_paths(dir, alternatives)?;
    let preferred = alternatives.first().ok_or_else(|| {
        Error::InvalidArgument("no file names given to resolve_first_in_dir".into())
    })?;
    paths
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| Error::MissingLocalFiles {
            dir: dir.to_path_buf(),
            files: vec![preferred.to_string()],
        })
}
