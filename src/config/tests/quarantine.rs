// SPDX-License-Identifier: GPL-3.0-or-later
//! Loader tests for `[quarantine]`, `[postfix]` and `[notify]`.

use crate::config::*;

use super::{load_after_domains as load_str, refused_after_domains as refused};

#[test]
fn defaults_hold_for_review_and_tell_senders_on_expiry() {
    let c = load_str("").expect("defaults");
    assert_eq!(c.state_dir, Path::new("/var/lib/fanout-milter"));
    assert_eq!(c.quarantine.review_within, Duration::from_secs(4 * 3600));
    assert_eq!(c.quarantine.expire_after, Duration::from_secs(3 * 86400));
    assert_eq!(c.quarantine.on_expiry, OnExpiry::NotifySender);
    assert_eq!(c.postfix.config_directory, Path::new("/etc/postfix"));
    assert_eq!(c.postfix.command_directory, Path::new("/usr/sbin"));
    assert_eq!(c.postfix.sendmail, Path::new("/usr/sbin/sendmail"));
    assert!(c.notify.admins.is_empty());
    assert_eq!(c.notify.webhook, None);
    assert_eq!(c.notify.interval, Duration::from_secs(60));
    assert_eq!(c.notify.relay, ("127.0.0.1".to_owned(), 25));
}

#[test]
fn settings_are_read() {
    let c = load_str(
        "[quarantine]\nstate_dir = \"/srv/fanout\"\nreview_within = \"1h\"\nexpire_after = \"2d\"\non_expiry = \"keep\"\n\
         [postfix]\nconfig_directory = \"/etc/postfix-out\"\n\
         [notify]\nadmins = [\"noc@corp.example\"]\nwebhook = \"https://hooks.corp.example/mail\"\n\
         interval = \"5m\"\nrelay = \"[::1]:10025\"\n",
    )
    .expect("valid");
    assert_eq!(c.state_dir, Path::new("/srv/fanout"));
    assert_eq!(c.quarantine.review_within, Duration::from_secs(3600));
    assert_eq!(c.quarantine.expire_after, Duration::from_secs(2 * 86400));
    assert_eq!(c.quarantine.on_expiry, OnExpiry::Keep);
    assert_eq!(c.postfix.config_directory, Path::new("/etc/postfix-out"));
    assert_eq!(c.notify.admins, ["noc@corp.example"]);
    assert_eq!(
        c.notify.webhook.as_ref().map(SecretUrl::expose),
        Some("https://hooks.corp.example/mail")
    );
    assert_eq!(c.notify.interval, Duration::from_secs(300));
    assert_eq!(c.notify.relay, ("::1".to_owned(), 10025));
}

#[test]
fn relative_paths_are_refused() {
    refused(
        "[quarantine]\nstate_dir = \"var/fanout\"\n",
        4,
        "quarantine.state_dir",
        "must be an absolute path",
    );
    refused(
        "[postfix]\nconfig_directory = \"postfix\"\n",
        4,
        "postfix.config_directory",
        "must be an absolute path",
    );
    refused(
        "[postfix]\nsendmail = \"sendmail\"\n",
        4,
        "postfix.sendmail",
        "must be an absolute path",
    );
}

#[test]
fn expiry_before_review_and_unknown_expiry_action_are_refused() {
    refused(
        "[quarantine]\nreview_within = \"1d\"\nexpire_after = \"2h\"\n",
        5,
        "quarantine.expire_after",
        "shorter than review_within",
    );
    refused(
        "[quarantine]\non_expiry = \"delete\"\n",
        4,
        "quarantine.on_expiry",
        "notify-sender",
    );
    refused(
        "[quarantine]\nreview_within = \"soon\"\n",
        4,
        "quarantine.review_within",
        "soon",
    );
}

#[test]
fn bad_notify_settings_are_refused() {
    refused(
        "[notify]\nadmins = [\"noc@corp.example\", \"not an address\"]\n",
        4,
        "notify.admins[1]",
        "not an address",
    );
    refused(
        "[notify]\nwebhook = \"ftp://hooks.corp.example\"\n",
        4,
        "notify.webhook",
        "http:// or https://",
    );
    refused(
        "[notify]\nfrom = \"Postmaster <postmaster@corp.example>\"\n",
        4,
        "notify.from",
        "plain address",
    );
    refused(
        "[notify]\nrelay = \"mail.corp.example\"\n",
        4,
        "notify.relay",
        "HOST:PORT",
    );
    refused(
        "[notify]\nrelay = \"mail.corp.example:0\"\n",
        4,
        "notify.relay",
        "HOST:PORT",
    );
}

#[test]
fn recipient_delimiter_from_the_file_wins_over_postconf() {
    let mut c = load_str("[postfix]\nrecipient_delimiter = \"+-\"\n").expect("config");
    resolve_delimiter(&mut c, |_| {
        panic!("postconf must not run when the file sets it")
    });
    assert_eq!(c.postfix.recipient_delimiter.as_str(), "+-");
    assert_eq!(c.postfix.delimiter_origin, DelimiterOrigin::Config);
    let mut none = load_str("[postfix]\nrecipient_delimiter = \"\"\n").expect("config");
    resolve_delimiter(&mut none, |_| panic!("postconf must not run"));
    assert!(
        none.postfix.recipient_delimiter.is_empty(),
        "empty: no delimiter"
    );
    assert!(
        c.effective_toml().contains("recipient_delimiter = \"+-\""),
        "{}",
        c.effective_toml()
    );
}

#[test]
fn recipient_delimiter_comes_from_postconf_or_falls_back_to_plus() {
    let mut c = load_str("[postfix]\nconfig_directory = \"/etc/postfix-out\"\n").expect("config");
    resolve_delimiter(&mut c, |p| {
        assert_eq!(p.config_directory, Path::new("/etc/postfix-out"));
        Ok("-".into())
    });
    assert_eq!(c.postfix.recipient_delimiter.as_str(), "-");
    assert_eq!(c.postfix.delimiter_origin, DelimiterOrigin::Postconf);

    let mut c = load_str("").expect("config");
    resolve_delimiter(&mut c, |_| {
        Err("cannot run /usr/sbin/postconf: not found".into())
    });
    assert_eq!(c.postfix.recipient_delimiter.as_str(), FALLBACK_DELIMITER);
    assert_eq!(FALLBACK_DELIMITER, "+");
    assert!(
        matches!(&c.postfix.delimiter_origin, DelimiterOrigin::Fallback(why) if why.contains("not found")),
        "{:?}",
        c.postfix.delimiter_origin
    );
    assert!(
        c.postfix
            .delimiter_origin
            .to_string()
            .starts_with("fallback \"+\": postconf could not be read"),
        "{}",
        c.postfix.delimiter_origin
    );
}

#[test]
fn postconf_failures_fall_back() {
    let settings = PostfixSettings {
        config_directory: PathBuf::from("/nonexistent"),
        command_directory: PathBuf::from("/nonexistent"),
        sendmail: PathBuf::from("/bin/false"),
        recipient_delimiter: Default::default(),
        delimiter_origin: DelimiterOrigin::Config,
        myorigin: String::new(),
        myorigin_origin: MyoriginOrigin::Config,
    };
    let e = postconf_lines(&settings).expect_err("no postconf there");
    assert!(e.contains("/nonexistent/postconf"), "{e}");
}

#[test]
fn myorigin_comes_from_the_file_or_postconf_or_the_host_name() {
    let mut c = load_str("[postfix]\nmyorigin = \"Lists.Corp.Example.\"\n").expect("config");
    resolve_myorigin(
        &mut c,
        |_| panic!("postconf must not run"),
        || panic!("no host"),
    );
    assert_eq!(c.postfix.myorigin, "lists.corp.example");
    assert_eq!(c.postfix.myorigin_origin, MyoriginOrigin::Config);
    assert_eq!(
        c.postfix.address_form().canonical("<small>"),
        "small@lists.corp.example"
    );
    assert!(
        c.policy
            .internal
            .is_internal("postmaster@lists.corp.example"),
        "a bare name stays internal once qualified"
    );

    let mut c = load_str("").expect("config");
    resolve_myorigin(
        &mut c,
        |_| Ok("Mail.Example.org".into()),
        || panic!("no host"),
    );
    assert_eq!(c.postfix.myorigin, "mail.example.org");
    assert_eq!(c.postfix.myorigin_origin, MyoriginOrigin::Postconf);

    let mut c = load_str("").expect("config");
    resolve_myorigin(
        &mut c,
        |_| Err("not found".into()),
        || "host.example".into(),
    );
    assert_eq!(c.postfix.myorigin, "host.example");
    assert!(c.policy.internal.is_internal("postmaster@host.example"));
    assert!(
        c.postfix
            .myorigin_origin
            .to_string()
            .starts_with("fallback: the host name"),
        "{}",
        c.postfix.myorigin_origin
    );
}

#[test]
fn postconf_answers_delimiter_then_myorigin() {
    let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        delimiter_line(&lines(&["+-", "corp.example"])).unwrap(),
        "+-"
    );
    assert_eq!(
        myorigin_line(&lines(&["+-", "corp.example"])).unwrap(),
        "corp.example"
    );
    assert!(
        myorigin_line(&lines(&["+"]))
            .unwrap_err()
            .contains("no myorigin")
    );
    assert!(myorigin_line(&lines(&["+", "$myhostname"])).is_err());
    assert!(myorigin_line(&lines(&["+", "[192.0.2.1]"])).is_ok());
}

#[test]
fn a_bad_myorigin_names_file_line_and_key() {
    refused(
        "[postfix]\nmyorigin = \"a b.example\"\n",
        4,
        "postfix.myorigin",
        "is not a domain",
    );
}

#[test]
fn a_bad_recipient_delimiter_names_file_line_and_key() {
    refused(
        "[postfix]\nrecipient_delimiter = 1\n",
        4,
        "postfix.recipient_delimiter",
        "invalid type",
    );
    refused(
        "[postfix]\nrecipient_delimiter = \"+@\"\n",
        4,
        "postfix.recipient_delimiter",
        "cannot separate an address extension",
    );
    refused(
        "[postfix]\nrecipient_delimiter = \"+ \"\n",
        4,
        "postfix.recipient_delimiter",
        "cannot separate an address extension",
    );
}
