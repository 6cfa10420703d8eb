//! Parsers for single policy values: SPIFFE IDs, principals, CIDRs, durations,
//! fingerprints, and the pieces of a schedule.
//!
//! Each parser fails closed: anything it does not positively recognise is an error that
//! names the rule the input broke. The policy loader, the control CLI and the TLS layer
//! all use these, so a value means the same thing wherever it is written.

use std::net::IpAddr;

use thiserror::Error;

use crate::model::{Cidr, MinuteRange, Principal, SpiffeId, Weekdays};

/// Longest SPIFFE ID accepted, in bytes (SPIFFE ID spec, "Maximum SPIFFE ID Length").
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain name accepted, in bytes (a DNS name is at most 255 bytes).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a valid SPIFFE ID. Each variant names the spec rule broken.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The input was empty.
    #[error("a spiffe id cannot be empty")]
    Empty,
    /// Longer than [`MAX_SPIFFE_ID_LEN`].
    #[error("a spiffe id may be at most 2048 bytes long, this one is {len}")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
    },
    /// Scheme spelled with uppercase letters.
    #[error("the scheme must be lowercase `spiffe://`")]
    SchemeNotLowercase,
    /// Not a `spiffe://` URI at all.
    #[error("a spiffe id must start with `spiffe://`")]
    WrongScheme,
    /// `spiffe://` followed by nothing or by `/`.
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    /// Longer than [`MAX_TRUST_DOMAIN_LEN`].
    #[error("the trust domain may be at most 255 bytes long, this one is {len}")]
    TrustDomainTooLong {
        /// Length of the trust domain in bytes.
        len: usize,
    },
    /// `user@` before the trust domain.
    #[error("the trust domain must not contain user info (`@`)")]
    UserInfo,
    /// `:port` after the trust domain.
    #[error("the trust domain must not contain a port (`:`)")]
    Port,
    /// Uppercase letters in the trust domain.
    #[error("the trust domain must be lowercase")]
    TrustDomainUppercase,
    /// Any other character outside `[a-z0-9.-_]` in the trust domain.
    #[error("the trust domain may only contain `a-z`, `0-9`, `.`, `-` and `_`, found `{}`", .ch.escape_debug())]
    TrustDomainChar {
        /// The offending character.
        ch: char,
    },
    /// `?` anywhere.
    #[error("a spiffe id must not have a query (`?`)")]
    Query,
    /// `#` anywhere.
    #[error("a spiffe id must not have a fragment (`#`)")]
    Fragment,
    /// `%` anywhere.
    #[error("percent-encoding (`%`) is not allowed in a spiffe id")]
    PercentEncoded,
    /// `//` inside the path.
    #[error("path segments must not be empty (`//`)")]
    EmptySegment,
    /// Ends with `/`.
    #[error("a spiffe id must not end with `/`")]
    TrailingSlash,
    /// A `.` or `..` segment.
    #[error("path segments must not be `.` or `..`")]
    DotSegment,
    /// A character outside `[A-Za-z0-9.-_]` in the path.
    #[error("path segments may only contain `A-Z`, `a-z`, `0-9`, `.`, `-` and `_`, found `{}`", .ch.escape_debug())]
    PathChar {
        /// The offending character.
        ch: char,
    },
}

/// Parses a SPIFFE ID per the SPIFFE ID spec: `spiffe://TRUST_DOMAIN[/SEGMENT...]`.
///
/// Fails closed: lowercase scheme, trust domain of `[a-z0-9.-_]` with no user info or
/// port, path segments of `[A-Za-z0-9.-_]` that are non-empty and not `.`/`..`, no
/// trailing slash, no query, fragment or percent-encoding, at most 2048 bytes.
///
/// # Errors
/// [`SpiffeIdError`] names the first rule the input breaks.
pub fn parse_spiffe_id(s: &str) -> Result<SpiffeId, SpiffeIdError> {
    if s.is_empty() {
        return Err(SpiffeIdError::Empty);
    }
    if s.len() > MAX_SPIFFE_ID_LEN {
        return Err(SpiffeIdError::TooLong { len: s.len() });
    }
    const SCHEME: &str = "spiffe://";
    let Some(rest) = s.strip_prefix(SCHEME) else {
        return match s.get(..SCHEME.len()) {
            Some(head) if head.eq_ignore_ascii_case(SCHEME) => {
                Err(SpiffeIdError::SchemeNotLowercase)
            }
            _ => Err(SpiffeIdError::WrongScheme),
        };
    };
    // Structural URI parts first: they explain a bad character better than a generic
    // character error would.
    if rest.contains('?') {
        return Err(SpiffeIdError::Query);
    }
    if rest.contains('#') {
        return Err(SpiffeIdError::Fragment);
    }
    if rest.contains('%') {
        return Err(SpiffeIdError::PercentEncoded);
    }
    let (trust_domain, path) = match rest.find('/') {
        Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("")),
        None => (rest, ""),
    };
    check_trust_domain(trust_domain)?;
    let mut segments = Vec::new();
    if !path.is_empty() {
        // `path` starts with '/'; the first split piece is the empty string before it.
        let mut pieces = path.split('/').skip(1).peekable();
        while let Some(seg) = pieces.next() {
            if seg.is_empty() {
                return Err(if pieces.peek().is_none() {
                    SpiffeIdError::TrailingSlash
                } else {
                    SpiffeIdError::EmptySegment
                });
            }
            if seg == "." || seg == ".." {
                return Err(SpiffeIdError::DotSegment);
            }
            if let Some(ch) = seg.chars().find(|c| !is_path_char(*c)) {
                return Err(SpiffeIdError::PathChar { ch });
            }
            segments.push(seg.to_owned());
        }
    }
    Ok(SpiffeId {
        trust_domain: trust_domain.to_owned(),
        segments,
    })
}

/// The DNS name of a `dns:` principal, lowercased.
fn dns_principal(name: &str) -> Result<String, PrincipalError> {
    let name = name.to_ascii_lowercase();
    check_dns_name(&name, false).map_err(|reason| PrincipalError::BadDnsName { reason })?;
    Ok(name)
}

/// The common name of a `cn:` principal.
fn cn_principal(name: &str) -> Result<String, PrincipalError> {
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(PrincipalError::BadCommonName);
    }
    Ok(name.to_owned())
}

/// `TD:NAME` after `dns@` or `cn@`: the checked trust domain, and the name unchecked.
fn scope<'s>(rest: &'s str, form: &'static str) -> Result<(String, &'s str), PrincipalError> {
    let (td, name) = rest
        .split_once(':')
        .ok_or(PrincipalError::ScopeWithoutName { form })?;
    check_trust_domain(td).map_err(|reason| PrincipalError::BadScope { form, reason })?;
    Ok((td.to_owned(), name))
}

/// The trust domain of a SPIFFE ID already parsed by [`parse_spiffe_id`] (or by the
/// TLS layer, which uses it): the text between `spiffe://` and the next `/`.
pub fn spiffe_trust_domain(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    Some(rest.split_once('/').map_or(rest, |(td, _)| td))
}

fn check_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if td.contains('@') {
        return Err(SpiffeIdError::UserInfo);
    }
    if td.contains(':') {
        return Err(SpiffeIdError::Port);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong { len: td.len() });
    }
    if td.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(SpiffeIdError::TrustDomainUppercase);
    }
    if let Some(ch) = td.chars().find(|c| !is_trust_domain_char(*c)) {
        return Err(SpiffeIdError::TrustDomainChar { ch });
    }
    Ok(())
}

fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// Why a string is not a valid principal.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PrincipalError {
    /// The input was empty.
    #[error("a principal cannot be empty")]
    Empty,
    /// No known prefix.
    #[error("unknown principal form; expected `*`, `spiffe://…`, `dns:NAME`, `cn:NAME`, `dns@TRUST-DOMAIN:NAME`, `cn@TRUST-DOMAIN:NAME`, `sha256:HEX` or `group:NAME`")]
    UnknownPrefix,
    /// A `spiffe://` principal that is not a valid SPIFFE ID.
    #[error(transparent)]
    Spiffe(#[from] SpiffeIdError),
    /// `*` somewhere other than a whole last path segment.
    #[error("a wildcard is only allowed as a whole last path segment (`spiffe://td/path/*`)")]
    MisplacedWildcard,
    /// `dns:` followed by something that is not a DNS name.
    #[error("`dns:` needs a dns name: {reason}")]
    BadDnsName {
        /// What is wrong with the name.
        reason: NameError,
    },
    /// `cn:` followed by nothing, or by control characters.
    #[error("`cn:` needs a non-empty common name without control characters")]
    BadCommonName,
    /// `dns@TD:NAME` or `cn@TD:NAME` without the `:` before the name.
    #[error("`{form}@TRUST-DOMAIN:NAME` needs a `:` between the trust domain and the name")]
    ScopeWithoutName {
        /// `dns` or `cn`.
        form: &'static str,
    },
    /// `dns@TD:NAME` or `cn@TD:NAME` whose trust domain is not valid.
    #[error("`{form}@TRUST-DOMAIN:NAME` needs a valid trust domain: {reason}")]
    BadScope {
        /// `dns` or `cn`.
        form: &'static str,
        /// What is wrong with the trust domain.
        reason: SpiffeIdError,
    },
    /// A `sha256:` principal whose fingerprint is malformed.
    #[error(transparent)]
    Fingerprint(#[from] FingerprintError),
    /// `group:` followed by something that cannot be a group name.
    #[error("`group:` needs a group name made of `A-Z`, `a-z`, `0-9`, `.`, `_` and `-`")]
    BadGroupName,
    /// `group:NAME` where no group context exists (single-value parsing).
    #[error("`group:` principals are only meaningful inside a policy")]
    GroupNotAllowed,
}

/// A principal as written in a rule or group: a principal, or a group reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Member {
    Principal(Principal),
    Group(String),
}

/// Parses a principal: `*`, `spiffe://td/path`, `spiffe://td/path/*`, `dns:NAME`,
/// `cn:NAME`, `dns@TD:NAME`, `cn@TD:NAME` or `sha256:HEX`. `group:NAME` is refused
/// here: groups need a policy.
///
/// DNS names are lowercased (they are compared lowercase).
///
/// # Errors
/// [`PrincipalError`] says which form was recognised and what is wrong with it.
pub fn parse_principal(s: &str) -> Result<Principal, PrincipalError> {
    match parse_member(s)? {
        Member::Principal(p) => Ok(p),
        Member::Group(_) => Err(PrincipalError::GroupNotAllowed),
    }
}

pub(crate) fn parse_member(s: &str) -> Result<Member, PrincipalError> {
    if s.is_empty() {
        return Err(PrincipalError::Empty);
    }
    if s == "*" {
        return Ok(Member::Principal(Principal::Any));
    }
    if let Some(name) = s.strip_prefix("group:") {
        check_name(name).map_err(|()| PrincipalError::BadGroupName)?;
        return Ok(Member::Group(name.to_owned()));
    }
    if let Some(name) = s.strip_prefix("dns:") {
        return Ok(Member::Principal(Principal::DnsSan(dns_principal(name)?)));
    }
    if let Some(name) = s.strip_prefix("cn:") {
        return Ok(Member::Principal(Principal::CommonName(cn_principal(
            name,
        )?)));
    }
    // `dns@TD:NAME`, `cn@TD:NAME`: the name scoped to one trust domain. The trust
    // domain comes first because a common name may itself contain `@`.
    if let Some(rest) = s.strip_prefix("dns@") {
        let (trust_domain, name) = scope(rest, "dns")?;
        return Ok(Member::Principal(Principal::DnsSanIn {
            trust_domain,
            name: dns_principal(name)?,
        }));
    }
    if let Some(rest) = s.strip_prefix("cn@") {
        let (trust_domain, name) = scope(rest, "cn")?;
        return Ok(Member::Principal(Principal::CommonNameIn {
            trust_domain,
            name: cn_principal(name)?,
        }));
    }
    if let Some(hex) = s.strip_prefix("sha256:") {
        return Ok(Member::Principal(Principal::Fingerprint(
            parse_fingerprint(hex)?,
        )));
    }
    let looks_spiffe = s
        .get(..7)
        .is_some_and(|h| h.eq_ignore_ascii_case("spiffe:"));
    if looks_spiffe {
        if let Some(base) = s.strip_suffix("/*") {
            // `spiffe://*` leaves no trust domain before the wildcard.
            if base.contains('*') || !base.contains("://") {
                return Err(PrincipalError::MisplacedWildcard);
            }
            let id = parse_spiffe_id(base)?;
            return Ok(Member::Principal(Principal::SpiffeUnder(id)));
        }
        if s.contains('*') {
            return Err(PrincipalError::MisplacedWildcard);
        }
        return Ok(Member::Principal(Principal::SpiffeExact(parse_spiffe_id(
            s,
        )?)));
    }
    Err(PrincipalError::UnknownPrefix)
}

/// Why a name (DNS name, SNI) is malformed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NameError {
    /// Empty name.
    #[error("the name is empty")]
    Empty,
    /// Longer than 253 bytes.
    #[error("a dns name may be at most 253 bytes long")]
    TooLong,
    /// Empty label (`a..b`, leading or trailing dot).
    #[error("labels must not be empty")]
    EmptyLabel,
    /// A label longer than 63 bytes.
    #[error("labels may be at most 63 bytes long")]
    LabelTooLong,
    /// A label starting or ending with `-`.
    #[error("labels must not start or end with `-`")]
    Hyphen,
    /// A character outside `[a-z0-9-_]`.
    #[error("names may only contain `a-z`, `0-9`, `-`, `_` and `.`, found `{}`", .ch.escape_debug())]
    Char {
        /// The offending character.
        ch: char,
    },
    /// `*` other than a whole first label `*.`.
    #[error("a wildcard is only allowed as the whole first label (`*.example.org`)")]
    Wildcard,
}

/// A DNS name as policy compares it (lowercased), checked the way `dns:` principals
/// are but without wildcards: for names read from certificates.
pub fn parse_dns_name(name: &str) -> Result<String, NameError> {
    let lower = name.to_ascii_lowercase();
    check_dns_name(&lower, false)?;
    Ok(lower)
}

/// Checks a lowercase DNS name; `allow_wildcard` permits a leading `*.` label.
pub(crate) fn check_dns_name(name: &str, allow_wildcard: bool) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 253 {
        return Err(NameError::TooLong);
    }
    let rest = match name.strip_prefix("*.") {
        Some(rest) if allow_wildcard => rest,
        _ => name,
    };
    if rest.contains('*') {
        return Err(NameError::Wildcard);
    }
    for label in rest.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(NameError::LabelTooLong);
        }
        if let Some(ch) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_')))
        {
            return Err(NameError::Char { ch });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(NameError::Hyphen);
        }
    }
    Ok(())
}

/// Checks a rule id, group name or service name: `[A-Za-z0-9._-]+`.
pub(crate) fn check_name(name: &str) -> Result<(), ()> {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        Ok(())
    } else {
        Err(())
    }
}

/// Why a string is not a valid CIDR.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CidrError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("`{}` is not an ipv4 or ipv6 address", .addr.escape_debug())]
    BadAddress {
        /// The address part as written.
        addr: String,
    },
    /// The prefix length is not a decimal number.
    #[error("the prefix length `{}` is not a number", .prefix.escape_debug())]
    BadPrefix {
        /// The prefix part as written.
        prefix: String,
    },
    /// The prefix is longer than the address family allows.
    #[error("the prefix length {prefix_len} is longer than {max}")]
    PrefixTooLong {
        /// The prefix length as written.
        prefix_len: u32,
        /// 32 or 128.
        max: u8,
    },
    /// Bits below the prefix are set.
    #[error("host bits are set; did you mean `{network}`?")]
    HostBitsSet {
        /// The network the input probably meant.
        network: Cidr,
    },
}

/// Parses `ADDR/LEN` (IPv4 or IPv6), or a bare address meaning `/32` or `/128`.
///
/// # Errors
/// [`CidrError`]; host bits set is an error that suggests the network.
pub fn parse_cidr(s: &str) -> Result<Cidr, CidrError> {
    let (addr_text, prefix_text) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| CidrError::BadAddress {
        addr: addr_text.to_owned(),
    })?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len = match prefix_text {
        None => max,
        Some(p) => {
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CidrError::BadPrefix {
                    prefix: p.to_owned(),
                });
            }
            let n: u32 = p.parse().map_err(|_| CidrError::BadPrefix {
                prefix: p.to_owned(),
            })?;
            if n > u32::from(max) {
                return Err(CidrError::PrefixTooLong { prefix_len: n, max });
            }
            u8::try_from(n).map_err(|_| CidrError::PrefixTooLong { prefix_len: n, max })?
        }
    };
    let network = Cidr {
        addr: mask(addr, prefix_len),
        prefix_len,
    };
    if network.addr != addr {
        return Err(CidrError::HostBitsSet { network });
    }
    Ok(network)
}

/// `addr` with every bit below `prefix_len` cleared.
pub(crate) fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix_len.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix_len.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// Why a string is not a valid duration.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Empty input.
    #[error("expected a duration like `90s`, `30m`, `8h`, `7d` or `1h30m`")]
    Empty,
    /// A number with no unit after it.
    #[error("every number needs a unit (`d`, `h`, `m` or `s`)")]
    MissingUnit,
    /// A unit with no number before it, or a character that is neither.
    #[error("unexpected `{}`; expected digits followed by `d`, `h`, `m` or `s`", .ch.escape_debug())]
    Unexpected {
        /// The offending character.
        ch: char,
    },
    /// Units repeated or out of order (`30m1h`).
    #[error("units must appear at most once, in the order `d`, `h`, `m`, `s`")]
    UnitOrder,
    /// Too large to count in seconds.
    #[error("the duration is too large")]
    TooLarge,
    /// Zero.
    #[error("the duration must be longer than zero")]
    Zero,
}

/// Parses a duration such as `90s`, `30m`, `8h`, `7d` or `1h30m` into seconds.
///
/// Units `d`, `h`, `m`, `s`, each at most once and in that order. Zero is refused.
///
/// # Errors
/// [`DurationError`].
pub fn parse_duration(s: &str) -> Result<u64, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    // Rank of the last unit seen: d=4, h=3, m=2, s=1; units must strictly decrease.
    let mut last_rank = u8::MAX;
    for ch in s.chars() {
        if let Some(d) = ch.to_digit(10) {
            let n = number
                .unwrap_or(0)
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d)))
                .ok_or(DurationError::TooLarge)?;
            number = Some(n);
            continue;
        }
        let (rank, secs) = match ch {
            'd' => (4, 86_400),
            'h' => (3, 3_600),
            'm' => (2, 60),
            's' => (1, 1),
            _ => return Err(DurationError::Unexpected { ch }),
        };
        let Some(n) = number.take() else {
            return Err(DurationError::Unexpected { ch });
        };
        if rank >= last_rank {
            return Err(DurationError::UnitOrder);
        }
        last_rank = rank;
        total = n
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .ok_or(DurationError::TooLarge)?;
    }
    if number.is_some() {
        return Err(DurationError::MissingUnit);
    }
    if total == 0 {
        return Err(DurationError::Zero);
    }
    Ok(total)
}

/// Why a string is not a valid SHA-256 fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FingerprintError {
    /// A character that is neither a hex digit nor a separating colon.
    #[error("expected hex digits, found `{}`", .ch.escape_debug())]
    BadChar {
        /// The offending character.
        ch: char,
    },
    /// Colons used, but not between every pair of hex digits.
    #[error("colons must separate every byte (`ab:cd:…`) or be left out")]
    BadColons,
    /// Not 64 hex digits.
    #[error("expected 64 hex digits, found {digits}")]
    WrongLength {
        /// How many hex digits were found.
        digits: usize,
    },
}

/// Parses a SHA-256 fingerprint: 64 hex digits, either case, optionally as 32
/// colon-separated pairs (`AB:CD:…`).
///
/// # Errors
/// [`FingerprintError`].
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], FingerprintError> {
    if let Some(ch) = s.chars().find(|c| !(c.is_ascii_hexdigit() || *c == ':')) {
        return Err(FingerprintError::BadChar { ch });
    }
    let digits: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
    if digits.len() != 64 {
        return Err(FingerprintError::WrongLength {
            digits: digits.len(),
        });
    }
    if s.contains(':') && !s.split(':').all(|pair| pair.len() == 2) {
        return Err(FingerprintError::BadColons);
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (Some(hi), Some(lo)) = (
            pair.first().and_then(|b| hex_val(*b)),
            pair.get(1).and_then(|b| hex_val(*b)),
        ) else {
            // Unreachable after the character check above; fail closed anyway.
            return Err(FingerprintError::WrongLength {
                digits: digits.len(),
            });
        };
        *byte = hi << 4 | lo;
    }
    Ok(out)
}

fn hex_val(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Why part of a schedule is impossible.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// Not a day name or range.
    #[error("unknown day `{text}`; expected mon, tue, wed, thu, fri, sat, sun or a range like `mon-fri`")]
    UnknownDay {
        /// The entry as written.
        text: String,
    },
    /// A range whose end comes before its start in the week.
    #[error("day range `{text}` wraps past sunday; split it, e.g. `fri-sun` and `mon`")]
    WrappingDays {
        /// The entry as written.
        text: String,
    },
    /// Not `HH:MM-HH:MM` with valid times.
    #[error("bad time range `{text}`; expected `HH:MM-HH:MM` between 00:00 and 24:00")]
    BadTime {
        /// The entry as written.
        text: String,
    },
    /// Start at or after end.
    #[error("time range `{text}` must start before it ends")]
    StartNotBeforeEnd {
        /// The entry as written.
        text: String,
    },
    /// Two ranges share minutes.
    #[error("time ranges `{first}` and `{second}` overlap")]
    Overlap {
        /// One range as written.
        first: String,
        /// The other range as written.
        second: String,
    },
    /// `days = []`.
    #[error("`days` is empty; list at least one day")]
    EmptyDays,
    /// `hours = []`.
    #[error("`hours` is empty; list at least one range, e.g. `00:00-24:00`")]
    EmptyHours,
    /// Not a known IANA zone.
    #[error("unknown time zone `{name}`; expected an iana name like `Europe/London` or `UTC`")]
    UnknownTimeZone {
        /// The name as written.
        name: String,
    },
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day_index(s: &str) -> Option<u8> {
    DAY_NAMES
        .iter()
        .position(|d| d.eq_ignore_ascii_case(s))
        .and_then(|i| u8::try_from(i).ok())
}

/// Parses one `days` entry (`mon` or `mon-fri`) into a day set.
pub(crate) fn parse_days(s: &str) -> Result<Weekdays, ScheduleError> {
    let unknown = || ScheduleError::UnknownDay { text: s.to_owned() };
    let (start, end) = match s.split_once('-') {
        Some((a, b)) => (
            day_index(a).ok_or_else(unknown)?,
            day_index(b).ok_or_else(unknown)?,
        ),
        None => {
            let d = day_index(s).ok_or_else(unknown)?;
            (d, d)
        }
    };
    if start > end {
        return Err(ScheduleError::WrappingDays { text: s.to_owned() });
    }
    let bits = (start..=end).fold(0u8, |acc, d| acc | 1 << d);
    Ok(Weekdays(bits))
}

fn parse_clock(s: &str) -> Option<u16> {
    let b = s.as_bytes();
    if b.len() != 5 || b.get(2) != Some(&b':') {
        return None;
    }
    let two = |i: usize| -> Option<u16> {
        let hi = char::from(*b.get(i)?).to_digit(10)?;
        let lo = char::from(*b.get(i + 1)?).to_digit(10)?;
        u16::try_from(hi * 10 + lo).ok()
    };
    let (h, m) = (two(0)?, two(3)?);
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

/// Parses one `hours` entry, `HH:MM-HH:MM`, into a minute range.
pub(crate) fn parse_hours(s: &str) -> Result<MinuteRange, ScheduleError> {
    let bad = || ScheduleError::BadTime { text: s.to_owned() };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let start = parse_clock(a).ok_or_else(bad)?;
    let end = parse_clock(b).ok_or_else(bad)?;
    if start >= end {
        return Err(ScheduleError::StartNotBeforeEnd { text: s.to_owned() });
    }
    Ok(MinuteRange {
        start_minute: start,
        end_minute: end,
    })
}

/// Checks that `name` is a time zone the bundled tz database knows.
pub(crate) fn check_time_zone(name: &str) -> Result<(), ScheduleError> {
    // jiff looks names up case-insensitively; require the canonical spelling so the
    // model holds one name per zone.
    match jiff::tz::TimeZone::get(name) {
        Ok(tz) if tz.iana_name().is_none_or(|n| n == name) => Ok(()),
        _ => Err(ScheduleError::UnknownTimeZone {
            name: name.to_owned(),
        }),
    }
}

/// Parses a calendar date `YYYY-MM-DD` into `YYYYMMDD`.
pub(crate) fn parse_patch_date(s: &str) -> Option<u32> {
    let b = s.as_bytes();
    if b.len() != 10 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    jiff::civil::Date::new(
        i16::try_from(y).ok()?,
        i8::try_from(m).ok()?,
        i8::try_from(d).ok()?,
    )
    .ok()?;
    Some(y * 10_000 + m * 100 + d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("8h"), Ok(28_800));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("1d2h3m4s"), Ok(93_784));
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("10"), Err(DurationError::MissingUnit));
        assert_eq!(parse_duration("1h2"), Err(DurationError::MissingUnit));
        assert_eq!(
            parse_duration("h"),
            Err(DurationError::Unexpected { ch: 'h' })
        );
        assert_eq!(
            parse_duration("5x"),
            Err(DurationError::Unexpected { ch: 'x' })
        );
        assert_eq!(
            parse_duration("1 h"),
            Err(DurationError::Unexpected { ch: ' ' })
        );
        assert_eq!(parse_duration("30m1h"), Err(DurationError::UnitOrder));
        assert_eq!(parse_duration("1h1h"), Err(DurationError::UnitOrder));
        assert_eq!(parse_duration("0s"), Err(DurationError::Zero));
        assert_eq!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::TooLarge)
        );
        assert_eq!(
            parse_duration("999999999999999999d"),
            Err(DurationError::TooLarge)
        );
    }

    #[test]
    fn fingerprints() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let fp = parse_fingerprint(hex);
        assert_eq!(fp.map(|f| (f[0], f[9], f[31])), Ok((0x00, 0x99, 0xff)));
        let colons: Vec<String> = (0..32)
            .map(|i| hex.get(i * 2..i * 2 + 2).unwrap_or("").to_owned())
            .collect();
        assert_eq!(parse_fingerprint(&colons.join(":")), parse_fingerprint(hex));
        assert_eq!(
            parse_fingerprint("abc"),
            Err(FingerprintError::WrongLength { digits: 3 })
        );
        assert_eq!(
            parse_fingerprint(&format!("{}g", hex.get(..63).unwrap_or(""))),
            Err(FingerprintError::BadChar { ch: 'g' })
        );
        let bad_colons = format!(
            "{}:{}",
            hex.get(..3).unwrap_or(""),
            hex.get(3..).unwrap_or("")
        );
        assert_eq!(
            parse_fingerprint(&bad_colons),
            Err(FingerprintError::BadColons)
        );
    }

    #[test]
    fn cidrs() {
        let c = |s: &str| parse_cidr(s).map(|c| c.to_string());
        assert_eq!(c("10.20.0.0/16"), Ok("10.20.0.0/16".into()));
        assert_eq!(c("192.0.2.7"), Ok("192.0.2.7/32".into()));
        assert_eq!(c("2001:db8::1"), Ok("2001:db8::1/128".into()));
        assert_eq!(c("2001:db8:20::/48"), Ok("2001:db8:20::/48".into()));
        assert_eq!(c("0.0.0.0/0"), Ok("0.0.0.0/0".into()));
        assert_eq!(c("::/0"), Ok("::/0".into()));
        assert!(matches!(
            parse_cidr("10.0.0.1/8"),
            Err(CidrError::HostBitsSet { network }) if network.to_string() == "10.0.0.0/8"
        ));
        assert_eq!(
            parse_cidr("10.0.0.0/33"),
            Err(CidrError::PrefixTooLong {
                prefix_len: 33,
                max: 32
            })
        );
        assert_eq!(
            parse_cidr("::/129"),
            Err(CidrError::PrefixTooLong {
                prefix_len: 129,
                max: 128
            })
        );
        assert!(matches!(
            parse_cidr("10.0.0/8"),
            Err(CidrError::BadAddress { .. })
        ));
        assert!(matches!(
            parse_cidr("10.0.0.0/+8"),
            Err(CidrError::BadPrefix { .. })
        ));
        assert!(matches!(
            parse_cidr("10.0.0.0/"),
            Err(CidrError::BadPrefix { .. })
        ));
        assert!(matches!(
            parse_cidr("010.0.0.0/8"),
            Err(CidrError::BadAddress { .. })
        ));
    }

    #[test]
    fn schedule_parts() {
        assert_eq!(parse_days("mon-fri"), Ok(Weekdays(0b001_1111)));
        assert_eq!(parse_days("sun"), Ok(Weekdays(0b100_0000)));
        assert_eq!(parse_days("Sat"), Ok(Weekdays(0b010_0000)));
        assert!(matches!(
            parse_days("fri-mon"),
            Err(ScheduleError::WrappingDays { .. })
        ));
        assert!(matches!(
            parse_days("funday"),
            Err(ScheduleError::UnknownDay { .. })
        ));
        assert!(matches!(
            parse_days("mon-"),
            Err(ScheduleError::UnknownDay { .. })
        ));
        assert_eq!(
            parse_hours("06:30-24:00"),
            Ok(MinuteRange {
                start_minute: 390,
                end_minute: 1440
            })
        );
        for bad in [
            "6:30-12:00",
            "24:01-24:02",
            "12:60-13:00",
            "12:00",
            "aa:bb-cc:dd",
        ] {
            assert!(
                matches!(parse_hours(bad), Err(ScheduleError::BadTime { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_hours("12:00-12:00"),
            Err(ScheduleError::StartNotBeforeEnd { .. })
        ));
        assert_eq!(check_time_zone("America/New_York"), Ok(()));
        assert_eq!(check_time_zone("UTC"), Ok(()));
        assert!(check_time_zone("Mars/Olympus").is_err());
        assert!(check_time_zone("america/new_york").is_err());
    }

    #[test]
    fn patch_dates() {
        assert_eq!(parse_patch_date("2026-09-01"), Some(20_260_901));
        assert_eq!(parse_patch_date("2024-02-29"), Some(20_240_229));
        assert_eq!(parse_patch_date("2025-02-29"), None);
        assert_eq!(parse_patch_date("2026-13-01"), None);
        assert_eq!(parse_patch_date("2026-9-01"), None);
        assert_eq!(parse_patch_date("+026-09-01"), None);
    }

    #[test]
    fn dns_names() {
        assert_eq!(check_dns_name("a.example.org", false), Ok(()));
        assert_eq!(check_dns_name("*.example.org", true), Ok(()));
        assert_eq!(
            check_dns_name("*.example.org", false),
            Err(NameError::Wildcard)
        );
        assert_eq!(check_dns_name("a.*.org", true), Err(NameError::Wildcard));
        assert_eq!(check_dns_name("a..org", false), Err(NameError::EmptyLabel));
        assert_eq!(check_dns_name("-a.org", false), Err(NameError::Hyphen));
        assert_eq!(
            check_dns_name("a b", false),
            Err(NameError::Char { ch: ' ' })
        );
    }
}
