//! Envoy's extension configs: `{name, typed_config: {"@type": ..., ...}}`, the
//! `TypedStruct` wrapper (`type_url` + `value`) and the legacy v2
//! `{name, config: {...}}`.
//!
//! The `@type` decides how the rest of the map is read. When it is the first
//! key (as everyone writes it) the rest is read straight from the YAML stream,
//! so errors inside keep their path and line; otherwise the map is buffered
//! first and errors carry only their message.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

/// A family of extensions (network filters, access loggers, ...) that can be
/// chosen by proto type name or, in v2 configs, by filter name.
pub trait Extensions: Sized {
    /// What the family is called in errors ("network filter").
    const KIND: &'static str;

    /// Whether an entry may carry `disabled` and `is_optional` beside its
    /// config, as Envoy's HTTP filters may.
    const SWITCHABLE: bool = false;

    /// Whether an entry may carry an access log `filter`.
    const FILTERED: bool = false;

    /// Reads the config of the extension whose proto message is `type_name`
    /// (`envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy`).
    fn from_type<'de, D: Deserializer<'de>>(type_name: &str, d: D) -> Result<Self, D::Error>;

    /// Reads the config of the extension named `name` (`envoy.tcp_proxy`),
    /// from a v2 `config:` block or, with no block, from an empty map.
    fn from_name<'de, D: Deserializer<'de>>(name: &str, d: D) -> Result<Self, D::Error>;
}

/// The last segment of a type URL: `type.googleapis.com/a.b.C` → `a.b.C`.
pub fn proto_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

const TYPED_STRUCTS: [&str; 2] = ["udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"];

/// One configured extension: its name and its config.
#[derive(Debug, Clone)]
pub struct Extension<E> {
    pub name: String,
    pub config: E,
    /// `disabled` (families that are [`Extensions::SWITCHABLE`]): off
    /// unless a route turns it on.
    pub disabled: bool,
    /// `filter` (families that are [`Extensions::FILTERED`]).
    pub filter: Option<super::AccessLogFilterConfig>,
}

impl<'de, E: Extensions> Deserialize<'de> for Extension<E> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ExtensionVisitor(PhantomData))
    }
}

struct ExtensionVisitor<E>(PhantomData<E>);

impl<'de, E: Extensions> Visitor<'de> for ExtensionVisitor<E> {
    type Value = Extension<E>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} with `name` and `typed_config`", E::KIND)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut name: Option<String> = None;
        let mut config: Option<E> = None;
        let mut disabled = false;
        let mut filter = None;
        // A legacy `config:` that came before `name:`.
        let mut early_config: Option<serde_norway::Value> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "name" => name = Some(map.next_value()?),
                "typed_config" => config = Some(map.next_value_seed(TypedConfig::<E>::new())?),
                "config" => match &name {
                    Some(n) => config = Some(map.next_value_seed(ByName::<E>::new(n))?),
                    None => early_config = Some(map.next_value()?),
                },
                "disabled" if E::SWITCHABLE => disabled = map.next_value()?,
                "filter" if E::FILTERED => filter = Some(map.next_value()?),
                // Whether a proxy without the filter may go on without it:
                // wasp still refuses filters it does not have.
                "is_optional" if E::SWITCHABLE => {
                    map.next_value::<bool>()?;
                }
                other => {
                    return Err(de::Error::unknown_field(
                        other,
                        match (E::SWITCHABLE, E::FILTERED) {
                            (true, _) => {
                                &["name", "typed_config", "config", "disabled", "is_optional"]
                            }
                            (_, true) => &["name", "typed_config", "config", "filter"],
                            _ => &["name", "typed_config", "config"],
                        },
                    ));
                }
            }
        }
        let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
        let config = match (config, early_config) {
            (Some(c), _) => c,
            (None, Some(v)) => E::from_name(&name, v).map_err(de::Error::custom)?,
            (None, None) => E::from_name(&name, empty_map()).map_err(de::Error::custom)?,
        };
        Ok(Extension {
            name,
            config,
            disabled,
            filter,
        })
    }
}

fn empty_map() -> serde_norway::Value {
    serde_norway::Value::Mapping(Default::default())
}

/// Reads a `typed_config` block (also usable on its own as a seed).
pub struct TypedConfig<E>(PhantomData<E>);

impl<E> TypedConfig<E> {
    pub fn new() -> Self {
        TypedConfig(PhantomData)
    }
}

impl<E> Default for TypedConfig<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'de, E: Extensions> DeserializeSeed<'de> for TypedConfig<E> {
    type Value = E;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<E, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, E: Extensions> Visitor<'de> for TypedConfig<E> {
    type Value = E;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map with an `@type`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<E, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            return Err(de::Error::missing_field("@type"));
        };
        if first != "@type" {
            // Rare: `@type` is not the first key. Buffer the map and look.
            let mut rest: serde_norway::Mapping = Default::default();
            rest.insert(first.into(), map.next_value()?);
            while let Some((k, v)) = map.next_entry::<serde_norway::Value, serde_norway::Value>()? {
                rest.insert(k, v);
            }
            return from_buffered::<E, A::Error>(rest);
        }
        let type_url: String = map.next_value()?;
        let type_name = proto_name(&type_url);
        if TYPED_STRUCTS.contains(&type_name) {
            return typed_struct::<E, A>(map);
        }
        E::from_type(type_name, MapAccessDeserializer::new(map))
    }
}

fn from_buffered<E: Extensions, Err: de::Error>(mut map: serde_norway::Mapping) -> Result<E, Err> {
    let Some(serde_norway::Value::String(type_url)) = map.remove("@type") else {
        return Err(de::Error::missing_field("@type"));
    };
    let type_name = proto_name(&type_url);
    if TYPED_STRUCTS.contains(&type_name) {
        let inner = map.remove("value").unwrap_or_else(empty_map);
        let Some(serde_norway::Value::String(url)) = map.remove("type_url") else {
            return Err(de::Error::missing_field("type_url"));
        };
        return E::from_type(proto_name(&url), inner).map_err(de::Error::custom);
    }
    E::from_type(type_name, serde_norway::Value::Mapping(map)).map_err(de::Error::custom)
}

fn typed_struct<'de, E: Extensions, A: MapAccess<'de>>(mut map: A) -> Result<E, A::Error> {
    let mut type_url: Option<String> = None;
    let mut value: Option<E> = None;
    let mut early_value: Option<serde_norway::Value> = None;
    while let Some(key) = map.next_key::<String>()? {
        match key.as_str() {
            "type_url" => type_url = Some(map.next_value()?),
            "value" => match &type_url {
                Some(url) => value = Some(map.next_value_seed(ByType::<E>::new(proto_name(url)))?),
                None => early_value = Some(map.next_value()?),
            },
            other => return Err(de::Error::unknown_field(other, &["type_url", "value"])),
        }
    }
    let type_url = type_url.ok_or_else(|| de::Error::missing_field("type_url"))?;
    match (value, early_value) {
        (Some(v), _) => Ok(v),
        (None, v) => E::from_type(proto_name(&type_url), v.unwrap_or_else(empty_map))
            .map_err(de::Error::custom),
    }
}

struct ByType<'a, E>(&'a str, PhantomData<E>);

impl<'a, E> ByType<'a, E> {
    fn new(type_name: &'a str) -> Self {
        ByType(type_name, PhantomData)
    }
}

impl<'de, E: Extensions> DeserializeSeed<'de> for ByType<'_, E> {
    type Value = E;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<E, D::Error> {
        E::from_type(self.0, d)
    }
}

struct ByName<'a, E>(&'a str, PhantomData<E>);

impl<'a, E> ByName<'a, E> {
    fn new(name: &'a str) -> Self {
        ByName(name, PhantomData)
    }
}

impl<'de, E: Extensions> DeserializeSeed<'de> for ByName<'_, E> {
    type Value = E;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<E, D::Error> {
        E::from_name(self.0, d)
    }
}

/// The error for an extension this build does not have.
pub fn unsupported<Err: de::Error>(kind: &str, what: &str, supported: &[&str]) -> Err {
    de::Error::custom(format_args!(
        "unsupported {kind} `{what}`; supported: {}",
        supported.join(", ")
    ))
}

/// For extensions without settings: accepts an empty map (or nothing).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}
