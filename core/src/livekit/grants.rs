//! LiveKit's video grants as Latchkey names, requests and caps them, and
//! the claims of a LiveKit access token.
//!
//! Names are LiveKit's own, as they appear in the token's `video` claim
//! (`roomJoin`, `canPublish`, …; see LiveKit's `auth/grants.go`). A token
//! always states `canPublish`, `canSubscribe` and `canPublishData`
//! explicitly: LiveKit reads a *missing* one as **allowed**, so leaving
//! out a grant the section withholds would hand it out.

use serde::Serialize;
use serde_json::{Map, Value};

/// One boolean video grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Grant {
    // The participant grants, in the order a default token lists them.
    RoomJoin,
    CanPublish,
    CanSubscribe,
    CanPublishData,
    // Inside the room, beyond an ordinary participant.
    CanUpdateOwnMetadata,
    CanSubscribeMetrics,
    Hidden,
    Agent,
    Recorder,
    RoomAdmin,
    // Beyond the named room: they reach every room of the project.
    RoomCreate,
    RoomList,
    RoomRecord,
    IngressAdmin,
}

impl Grant {
    pub const ALL: [Grant; 14] = [
        Grant::RoomJoin,
        Grant::CanPublish,
        Grant::CanSubscribe,
        Grant::CanPublishData,
        Grant::CanUpdateOwnMetadata,
        Grant::CanSubscribeMetrics,
        Grant::Hidden,
        Grant::Agent,
        Grant::Recorder,
        Grant::RoomAdmin,
        Grant::RoomCreate,
        Grant::RoomList,
        Grant::RoomRecord,
        Grant::IngressAdmin,
    ];

    /// What an ordinary participant needs: a section's default, and what a
    /// request without `grants` gets (of those the section allows).
    pub const PARTICIPANT: [Grant; 4] = [
        Grant::RoomJoin,
        Grant::CanPublish,
        Grant::CanSubscribe,
        Grant::CanPublishData,
    ];

    /// LiveKit's name of the grant.
    pub fn name(self) -> &'static str {
        match self {
            Grant::RoomJoin => "roomJoin",
            Grant::CanPublish => "canPublish",
            Grant::CanSubscribe => "canSubscribe",
            Grant::CanPublishData => "canPublishData",
            Grant::CanUpdateOwnMetadata => "canUpdateOwnMetadata",
            Grant::CanSubscribeMetrics => "canSubscribeMetrics",
            Grant::Hidden => "hidden",
            Grant::Agent => "agent",
            Grant::Recorder => "recorder",
            Grant::RoomAdmin => "roomAdmin",
            Grant::RoomCreate => "roomCreate",
            Grant::RoomList => "roomList",
            Grant::RoomRecord => "roomRecord",
            Grant::IngressAdmin => "ingressAdmin",
        }
    }

    /// The grant called `name`; the error is a reason listing the names.
    pub fn parse(name: &str) -> Result<Grant, String> {
        Grant::ALL
            .into_iter()
            .find(|g| g.name() == name)
            .ok_or_else(|| {
                format!(
                    "unknown grant `{}`; known: {}",
                    name.escape_debug(),
                    Grant::ALL.map(Grant::name).join(", ")
                )
            })
    }

    /// Whether LiveKit reads a missing claim as allowed, so a token must
    /// state it even when false.
    fn allowed_when_missing(self) -> bool {
        matches!(
            self,
            Grant::CanPublish | Grant::CanSubscribe | Grant::CanPublishData
        )
    }
}

/// A track source for `canPublishSources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PublishSource {
    Camera,
    Microphone,
    ScreenShare,
    ScreenShareAudio,
}

impl PublishSource {
    const ALL: [PublishSource; 4] = [
        PublishSource::Camera,
        PublishSource::Microphone,
        PublishSource::ScreenShare,
        PublishSource::ScreenShareAudio,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PublishSource::Camera => "camera",
            PublishSource::Microphone => "microphone",
            PublishSource::ScreenShare => "screen_share",
            PublishSource::ScreenShareAudio => "screen_share_audio",
        }
    }

    pub fn parse(name: &str) -> Result<PublishSource, String> {
        PublishSource::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                format!(
                    "unknown track source `{}`; known: camera, microphone, screen_share, screen_share_audio",
                    name.escape_debug()
                )
            })
    }
}

/// The grants a request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requested {
    /// Those set to `true` (sorted, no duplicates).
    pub grants: Vec<Grant>,
    /// `canPublishSources`, if given (sorted, no duplicates).
    pub sources: Option<Vec<PublishSource>>,
}

/// Why a request's `grants` object was refused: `Invalid` is malformed
/// (400), `NotAllowed` beyond the section (403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantsRefusal {
    Invalid(String),
    NotAllowed(String),
}

impl Requested {
    /// Reads `{"canPublish": true, "canPublishSources": ["microphone"], …}`.
    /// Only booleans (and the list of sources) are accepted; `false` is
    /// the same as leaving the grant out.
    pub fn parse(object: &Map<String, Value>) -> Result<Requested, GrantsRefusal> {
        let mut out = Requested::default();
        for (name, value) in object {
            if name == "canPublishSources" {
                let list = value.as_array().ok_or_else(|| {
                    GrantsRefusal::Invalid("`canPublishSources` must be a list of sources".into())
                })?;
                let mut sources = list
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .ok_or_else(|| "a track source is a string".to_string())
                            .and_then(PublishSource::parse)
                            .map_err(GrantsRefusal::Invalid)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                sources.sort();
                sources.dedup();
                out.sources = Some(sources);
                continue;
            }
            let grant = Grant::parse(name).map_err(GrantsRefusal::Invalid)?;
            match value {
                Value::Bool(true) => out.grants.push(grant),
                Value::Bool(false) => {}
                _ => {
                    return Err(GrantsRefusal::Invalid(format!(
                        "grant `{}` must be true or false",
                        grant.name()
                    )));
                }
            }
        }
        out.grants.sort();
        out.grants.dedup();
        Ok(out)
    }

    /// What a request without `grants` asks for: the participant grants the
    /// section allows.
    pub fn default_for(allowed: &[Grant]) -> Requested {
        Requested {
            grants: Grant::PARTICIPANT
                .into_iter()
                .filter(|g| allowed.contains(g))
                .collect(),
            sources: None,
        }
    }

    /// Checks the request against the section (`allowed` grants, allowed
    /// `sources`, empty meaning any) and returns the sources the token
    /// carries.
    pub fn check(
        &self,
        allowed: &[Grant],
        allowed_sources: &[PublishSource],
    ) -> Result<Vec<PublishSource>, GrantsRefusal> {
        if let Some(g) = self.grants.iter().find(|g| !allowed.contains(*g)) {
            return Err(GrantsRefusal::NotAllowed(format!(
                "grant `{}` is not allowed by this LiveKit section (allowed: {})",
                g.name(),
                list(allowed.iter().map(|g| g.name()))
            )));
        }
        match &self.sources {
            None => Ok(allowed_sources.to_vec()),
            Some(asked) => {
                if let Some(s) = asked
                    .iter()
                    .find(|s| !allowed_sources.is_empty() && !allowed_sources.contains(*s))
                {
                    return Err(GrantsRefusal::NotAllowed(format!(
                        "track source `{}` is not allowed by this LiveKit section (allowed: {})",
                        s.name(),
                        list(allowed_sources.iter().map(|s| s.name()))
                    )));
                }
                // An empty list would mean "any source" to LiveKit: asking
                // for none is not publishing at all.
                if asked.is_empty() {
                    return Err(GrantsRefusal::Invalid(
                        "`canPublishSources` needs at least one source (leave out `canPublish` to publish nothing)".into(),
                    ));
                }
                Ok(asked.clone())
            }
        }
    }
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The claims of a LiveKit access token (HS256, signed with the API
/// secret).
#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    /// The API key.
    pub iss: String,
    /// The participant's identity.
    pub sub: String,
    pub nbf: i64,
    pub exp: i64,
    /// 128 random bits, hex: names the token in the audit log.
    pub jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub video: Map<String, Value>,
}

/// The `video` claim: the room, every granted grant as `true`, the three
/// LiveKit allows when missing always stated, and the publish sources if
/// limited.
pub fn video_claim(room: &str, grants: &[Grant], sources: &[PublishSource]) -> Map<String, Value> {
    let mut video = Map::new();
    video.insert("room".into(), Value::String(room.to_string()));
    for g in Grant::ALL {
        let on = grants.contains(&g);
        if on || g.allowed_when_missing() {
            video.insert(g.name().into(), Value::Bool(on));
        }
    }
    if !sources.is_empty() {
        video.insert(
            "canPublishSources".into(),
            Value::Array(
                sources
                    .iter()
                    .map(|s| Value::String(s.name().into()))
                    .collect(),
            ),
        );
    }
    video
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: Value) -> Result<Requested, GrantsRefusal> {
        Requested::parse(v.as_object().expect("object"))
    }

    #[test]
    fn names_round_trip() {
        for g in Grant::ALL {
            assert_eq!(Grant::parse(g.name()), Ok(g));
        }
        for s in PublishSource::ALL {
            assert_eq!(PublishSource::parse(s.name()), Ok(s));
        }
        assert!(Grant::parse("room_join").is_err());
        assert!(Grant::parse("RoomJoin").is_err());
    }

    #[test]
    fn requests_are_booleans_within_the_section() {
        let allowed = Grant::PARTICIPANT;
        let r = req(json!({"roomJoin": true, "canPublish": false, "canSubscribe": true}))
            .expect("parse");
        assert_eq!(r.grants, [Grant::RoomJoin, Grant::CanSubscribe]);
        assert_eq!(r.check(&allowed, &[]), Ok(vec![]));
        let r = req(json!({"roomJoin": true, "roomAdmin": true})).expect("parse");
        assert!(matches!(
            r.check(&allowed, &[]),
            Err(GrantsRefusal::NotAllowed(m)) if m.contains("roomAdmin")
        ));
        // Asking `false` for a withheld grant is fine.
        let r = req(json!({"roomJoin": true, "roomAdmin": false})).expect("parse");
        assert!(r.check(&allowed, &[]).is_ok());
        for bad in [
            json!({"canFly": true}),
            json!({"roomJoin": "yes"}),
            json!({"roomJoin": 1}),
            json!({"canPublishSources": "microphone"}),
            json!({"canPublishSources": ["radio"]}),
        ] {
            assert!(
                matches!(req(bad.clone()), Err(GrantsRefusal::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn sources_stay_within_the_section() {
        let allowed = Grant::PARTICIPANT;
        let mic = [PublishSource::Microphone];
        // None asked: the section's list.
        let r = req(json!({"canPublish": true})).expect("parse");
        assert_eq!(r.check(&allowed, &mic), Ok(mic.to_vec()));
        let r = req(json!({"canPublish": true, "canPublishSources": ["camera"]})).expect("parse");
        assert!(matches!(
            r.check(&allowed, &mic),
            Err(GrantsRefusal::NotAllowed(_))
        ));
        assert_eq!(r.check(&allowed, &[]), Ok(vec![PublishSource::Camera]));
        let r = req(json!({"canPublishSources": []})).expect("parse");
        assert!(matches!(
            r.check(&allowed, &[]),
            Err(GrantsRefusal::Invalid(_))
        ));
    }

    #[test]
    fn withheld_defaults_are_stated_false() {
        let v = video_claim("r", &[Grant::RoomJoin, Grant::CanSubscribe], &[]);
        assert_eq!(
            Value::Object(v),
            json!({
                "room": "r",
                "roomJoin": true,
                "canPublish": false,
                "canSubscribe": true,
                "canPublishData": false,
            })
        );
        let v = video_claim(
            "r",
            &[Grant::RoomJoin, Grant::CanPublish, Grant::Agent],
            &[PublishSource::Microphone],
        );
        assert_eq!(v["agent"], json!(true));
        assert_eq!(v["canPublishSources"], json!(["microphone"]));
        assert!(!v.contains_key("roomAdmin"));
    }

    #[test]
    fn default_request_is_the_allowed_participant_grants() {
        let r = Requested::default_for(&[Grant::RoomJoin, Grant::CanSubscribe, Grant::RoomAdmin]);
        assert_eq!(r.grants, [Grant::RoomJoin, Grant::CanSubscribe]);
    }
}
