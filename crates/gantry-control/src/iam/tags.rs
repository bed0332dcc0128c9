//! Tags of users and roles (TagUser, UntagUser, TagRole, UntagRole, and at creation), as IAM
//! checks them; policies read them as `aws:PrincipalTag/<key>` (see `principal_context`).

use super::{Iam, IamError, Role, Tag, User};

/// Tags one user or role may have.
pub const MAX_TAGS: usize = 50;

fn invalid(message: String) -> IamError {
    IamError::new("InvalidInputException", message)
}

/// IAM's character set for tag keys and values: letters, digits, spaces and `_.:/=+-@`.
fn tag_text(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c))
}

/// Tags as a request gives them: keys of 1 to 128 characters, values up to 256, each key once
/// (keys differing only in case are the same key to IAM).
pub fn check_tags(tags: &[Tag]) -> Result<(), IamError> {
    for (i, t) in tags.iter().enumerate() {
        if t.key.is_empty() || t.key.chars().count() > 128 || !tag_text(&t.key) {
            return Err(invalid(format!(
                "1 validation error detected: Value '{}' at 'tags.{}.member.key' failed to satisfy constraint: Member must have length between 1 and 128 and satisfy the pattern [\\p{{L}}\\p{{Z}}\\p{{N}}_.:/=+\\-@]+",
                t.key,
                i + 1
            )));
        }
        if t.value.chars().count() > 256 || !tag_text(&t.value) {
            return Err(invalid(format!(
                "1 validation error detected: Value at 'tags.{}.member.value' failed to satisfy constraint: Member must have length less than or equal to 256 and satisfy the pattern [\\p{{L}}\\p{{Z}}\\p{{N}}_.:/=+\\-@]*",
                i + 1
            )));
        }
        if tags[..i].iter().any(|o| o.key.eq_ignore_ascii_case(&t.key)) {
            return Err(invalid(format!("Duplicate tag keys found: {}", t.key)));
        }
    }
    Ok(())
}

/// `existing` with `new` added (a key already there takes the new value); at most 50 in all.
pub fn merged(existing: &[Tag], new: &[Tag]) -> Result<Vec<Tag>, IamError> {
    check_tags(new)?;
    let mut out: Vec<Tag> = existing
        .iter()
        .filter(|t| !new.iter().any(|n| n.key.eq_ignore_ascii_case(&t.key)))
        .cloned()
        .collect();
    out.extend(new.iter().cloned());
    if out.len() > MAX_TAGS {
        return Err(IamError::new(
            "LimitExceededException",
            format!("The number of tags has reached the maximum limit of {MAX_TAGS}."),
        ));
    }
    Ok(out)
}

/// `existing` without the tags of `keys` (absent keys are fine, as in IAM).
pub fn without(existing: &[Tag], keys: &[String]) -> Vec<Tag> {
    existing
        .iter()
        .filter(|t| !keys.iter().any(|k| k.eq_ignore_ascii_case(&t.key)))
        .cloned()
        .collect()
}

/// A change of tags: add these, or remove those keys.
pub enum TagChange<'a> {
    Add(&'a [Tag]),
    Remove(&'a [String]),
}

impl TagChange<'_> {
    fn apply(&self, tags: &[Tag]) -> Result<Vec<Tag>, IamError> {
        match self {
            TagChange::Add(new) => merged(tags, new),
            TagChange::Remove(keys) => Ok(without(tags, keys)),
        }
    }
}

impl Iam {
    pub async fn change_user_tags(&self, account: &str, name: &str, change: TagChange<'_>) -> Result<(), IamError> {
        self.user(account, name).await?;
        self.records
            .update(&Self::user_key(account, name), |cur: Option<User>| {
                let mut u = cur.ok_or_else(|| IamError::no_user(name))?;
                u.tags = change.apply(&u.tags)?;
                Ok((Some(u), ()))
            })
            .await
    }

    pub async fn change_role_tags(&self, account: &str, name: &str, change: TagChange<'_>) -> Result<(), IamError> {
        self.role(account, name).await?;
        self.records
            .update(&Self::role_key(account, name), |cur: Option<Role>| {
                let mut r = cur.ok_or_else(|| IamError::no_role(name))?;
                r.tags = change.apply(&r.tags)?;
                Ok((Some(r), ()))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(k: &str, v: &str) -> Tag {
        Tag {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn tags_are_checked_merged_and_removed_as_iam_does() {
        assert!(check_tags(&[tag("team", "web"), tag("cost-center", "42 / a@b")]).is_ok());
        for (bad, says) in [
            (vec![tag("", "x")], "tags.1.member.key"),
            (vec![tag(&"k".repeat(129), "x")], "tags.1.member.key"),
            (vec![tag("ok", "x"), tag("bad*key", "x")], "tags.2.member.key"),
            (vec![tag("k", &"v".repeat(257))], "tags.1.member.value"),
            (
                vec![tag("Team", "a"), tag("team", "b")],
                "Duplicate tag keys found: team",
            ),
        ] {
            let e = check_tags(&bad).unwrap_err();
            assert_eq!(e.shape, "InvalidInputException");
            assert!(e.message.contains(says), "{}", e.message);
        }
        let have = vec![tag("team", "web"), tag("env", "prod")];
        let m = merged(&have, &[tag("Team", "api"), tag("owner", "me")]).unwrap();
        assert_eq!(m, vec![tag("env", "prod"), tag("Team", "api"), tag("owner", "me")]);
        assert_eq!(
            without(&m, &["TEAM".into(), "absent".into()]),
            vec![tag("env", "prod"), tag("owner", "me")]
        );
        let full: Vec<Tag> = (0..MAX_TAGS).map(|i| tag(&format!("k{i}"), "v")).collect();
        assert_eq!(merged(&full, &[tag("k0", "again")]).unwrap().len(), MAX_TAGS);
        assert_eq!(
            merged(&full, &[tag("one-more", "v")]).unwrap_err().shape,
            "LimitExceededException"
        );
    }
}
