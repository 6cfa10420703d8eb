//! SPIFFE ID spec cases, table-driven: what the spec allows parses to the right parts,
//! everything else is refused with the rule it breaks.

use zgate_policy::model::{Principal, SpiffeId};
use zgate_policy::{parse_principal, parse_spiffe_id, PrincipalError, SpiffeIdError};

#[test]
fn valid_ids() {
    let long_path = format!("spiffe://td/{}", "a".repeat(2048 - "spiffe://td/".len()));
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        ("spiffe://example.org", "example.org", vec![]),
        (
            "spiffe://example.org/ns/trading/sa/desk1",
            "example.org",
            vec!["ns", "trading", "sa", "desk1"],
        ),
        (
            "spiffe://a-b_c.d0/Path.With-All_Chars09",
            "a-b_c.d0",
            vec!["Path.With-All_Chars09"],
        ),
        ("spiffe://1.2.3.4/x", "1.2.3.4", vec!["x"]),
        ("spiffe://td/.../..a/a..", "td", vec!["...", "..a", "a.."]),
        ("spiffe://td/UPPER/case", "td", vec!["UPPER", "case"]),
        (
            long_path.as_str(),
            "td",
            vec![long_path.get(12..).unwrap_or("")],
        ),
    ];
    for (input, td, segs) in cases {
        let expected = SpiffeId {
            trust_domain: td.to_owned(),
            segments: segs.iter().map(|s| (*s).to_owned()).collect(),
        };
        assert_eq!(parse_spiffe_id(input), Ok(expected.clone()), "{input}");
        assert_eq!(expected.to_string(), input, "display round trip");
    }
}

#[test]
fn invalid_ids() {
    use SpiffeIdError as E;
    let too_long = format!(
        "spiffe://td/{}",
        "a".repeat(2048 - "spiffe://td/".len() + 1)
    );
    let long_td = format!("spiffe://{}/x", "a".repeat(256));
    let cases: Vec<(&str, E)> = vec![
        ("", E::Empty),
        (too_long.as_str(), E::TooLong { len: 2049 }),
        (long_td.as_str(), E::TrustDomainTooLong { len: 256 }),
        ("SPIFFE://example.org/a", E::SchemeNotLowercase),
        ("Spiffe://example.org/a", E::SchemeNotLowercase),
        ("spiffe:/example.org/a", E::WrongScheme),
        ("https://example.org/a", E::WrongScheme),
        ("example.org/a", E::WrongScheme),
        ("spiffe://", E::EmptyTrustDomain),
        ("spiffe:///a", E::EmptyTrustDomain),
        ("spiffe://Example.org/a", E::TrustDomainUppercase),
        ("spiffe://example.org:8443/a", E::Port),
        ("spiffe://user@example.org/a", E::UserInfo),
        ("spiffe://user:pw@example.org/a", E::UserInfo),
        ("spiffe://exa mple.org/a", E::TrustDomainChar { ch: ' ' }),
        ("spiffe://exämple.org/a", E::TrustDomainChar { ch: 'ä' }),
        ("spiffe://example.org/a?x=1", E::Query),
        ("spiffe://example.org/a#frag", E::Fragment),
        ("spiffe://example.org/a%20b", E::PercentEncoded),
        ("spiffe://example.org/", E::TrailingSlash),
        ("spiffe://example.org/a/", E::TrailingSlash),
        ("spiffe://example.org//a", E::EmptySegment),
        ("spiffe://example.org/a//b", E::EmptySegment),
        ("spiffe://example.org/a/./b", E::DotSegment),
        ("spiffe://example.org/a/..", E::DotSegment),
        ("spiffe://example.org/.", E::DotSegment),
        ("spiffe://example.org/a b", E::PathChar { ch: ' ' }),
        ("spiffe://example.org/a~b", E::PathChar { ch: '~' }),
        ("spiffe://example.org/a*", E::PathChar { ch: '*' }),
        ("spiffe://example.org/ä", E::PathChar { ch: 'ä' }),
        ("spiffe://example.org/a\\b", E::PathChar { ch: '\\' }),
    ];
    for (input, expected) in cases {
        assert_eq!(parse_spiffe_id(input), Err(expected), "{input}");
    }
}

#[test]
fn error_messages_name_the_rule() {
    let msg = |s: &str| {
        parse_spiffe_id(s)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert_eq!(
        msg("spiffe://td/a?b"),
        "a spiffe id must not have a query (`?`)"
    );
    assert_eq!(
        msg("spiffe://td:1/a"),
        "the trust domain must not contain a port (`:`)"
    );
    assert_eq!(
        msg("spiffe://td/a+b"),
        "path segments may only contain `A-Z`, `a-z`, `0-9`, `.`, `-` and `_`, found `+`"
    );
}

#[test]
fn wildcard_principals() {
    let id = |td: &str, segs: &[&str]| SpiffeId {
        trust_domain: td.to_owned(),
        segments: segs.iter().map(|s| (*s).to_owned()).collect(),
    };
    assert_eq!(
        parse_principal("spiffe://example.org/ns/trading/*"),
        Ok(Principal::SpiffeUnder(id(
            "example.org",
            &["ns", "trading"]
        )))
    );
    assert_eq!(
        parse_principal("spiffe://example.org/*"),
        Ok(Principal::SpiffeUnder(id("example.org", &[])))
    );
    let misplaced = [
        "spiffe://example.org/ns/trad*",
        "spiffe://example.org/*/sa",
        "spiffe://example.org/ns/*/*",
        "spiffe://*/ns",
        "spiffe://*",
        "spiffe://example.org/**",
        "spiffe://exa*mple.org/a",
    ];
    for input in misplaced {
        assert_eq!(
            parse_principal(input),
            Err(PrincipalError::MisplacedWildcard),
            "{input}"
        );
    }
    // The base of a wildcard must itself be a valid SPIFFE ID.
    assert_eq!(
        parse_principal("spiffe://example.org//*"),
        Err(PrincipalError::Spiffe(SpiffeIdError::TrailingSlash))
    );
    assert_eq!(
        parse_principal("SPIFFE://example.org/*"),
        Err(PrincipalError::Spiffe(SpiffeIdError::SchemeNotLowercase))
    );
    assert_eq!(
        parse_principal("group:ops"),
        Err(PrincipalError::GroupNotAllowed)
    );
}
