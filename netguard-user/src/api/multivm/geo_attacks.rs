//! `GET /geo-attacks`: the window's attacks per country and city, from a GeoIP database.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use netguard_store::{Alert, types::HostEventRecord};
use serde::{Deserialize, Serialize};

use super::ips::{UNKNOWN, alerts_of};
use super::{geoip_unavailable, load_alerts, load_events, parse_since, vm_filter, weight};
use crate::api::{
    ApiState,
    auth::{Auth, Read},
    error::{ApiError, ApiQuery},
    responses::ParamErrors,
};
use crate::geo::Location;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GeoQuery {
    /// Window start: a duration back from now ("1h", "7d") or an RFC 3339 time; default "24h".
    #[param(example = "24h")]
    pub since: Option<String>,
    /// Only failed logins against, and alerts raised by, this VM.
    #[param(example = "vm-1", max_length = 128)]
    pub vm_id: Option<String>,
}

/// The database answering.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GeoDatabase {
    /// Its metadata's type, e.g. "GeoLite2-City".
    #[schema(example = "GeoLite2-City")]
    pub database_type: String,
    /// When it was built (Unix seconds).
    pub build_epoch: u64,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CityAttacks {
    /// English city name.
    #[schema(example = "London")]
    pub city: String,
    pub attacks: u64,
    pub unique_ips: usize,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CountryAttacks {
    /// ISO 3166-1 alpha-2 code, or "unknown" (private addresses, addresses not in the database).
    #[schema(example = "GB")]
    pub country_code: String,
    /// English name, or "unknown".
    #[schema(example = "United Kingdom")]
    pub country: String,
    /// Failed logins plus alerts.
    pub attacks: u64,
    pub failed_logins: u64,
    pub alerts: u64,
    pub unique_ips: usize,
    /// Per city, for City databases (most attacks first); attacks without a city are not listed.
    pub cities: Vec<CityAttacks>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GeoAttacks {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub database: GeoDatabase,
    /// Failed logins plus alerts in the window.
    pub total_attacks: u64,
    pub unique_ips: usize,
    /// Most attacks first, then by country code.
    pub countries: Vec<CountryAttacks>,
}

#[derive(Default)]
struct GeoAgg {
    name: Option<String>,
    failed: u64,
    alerts: u64,
    ips: BTreeSet<IpAddr>,
    cities: BTreeMap<String, (u64, BTreeSet<IpAddr>)>,
}

/// Attacks per country (and city), with `locate` placing each distinct address once.
pub(crate) fn by_country(
    events: &[HostEventRecord],
    alerts: &[Alert],
    mut locate: impl FnMut(IpAddr) -> Location,
) -> Vec<CountryAttacks> {
    let mut places: HashMap<IpAddr, Location> = HashMap::new();
    let mut countries: BTreeMap<String, GeoAgg> = BTreeMap::new();
    let attacks = events
        .iter()
        .filter(|e| e.failure)
        .map(|e| (e.src_ip, 1, true))
        .chain(alerts.iter().map(|a| (a.src_ip, weight(a), false)));
    for (ip, n, failure) in attacks {
        let loc = places.entry(ip).or_insert_with(|| locate(ip));
        let code = loc.country_code.clone().unwrap_or_else(|| UNKNOWN.into());
        let agg = countries.entry(code).or_default();
        if agg.name.is_none() {
            agg.name.clone_from(&loc.country);
        }
        if failure {
            agg.failed += n;
        } else {
            agg.alerts += n;
        }
        agg.ips.insert(ip);
        if let Some(city) = &loc.city {
            let c = agg.cities.entry(city.clone()).or_default();
            c.0 += n;
            c.1.insert(ip);
        }
    }
    let mut out: Vec<CountryAttacks> = countries
        .into_iter()
        .map(|(code, a)| {
            let mut cities: Vec<CityAttacks> = a
                .cities
                .into_iter()
                .map(|(city, (attacks, ips))| CityAttacks {
                    city,
                    attacks,
                    unique_ips: ips.len(),
                })
                .collect();
            cities.sort_by(|x, y| y.attacks.cmp(&x.attacks).then_with(|| x.city.cmp(&y.city)));
            CountryAttacks {
                country: a.name.unwrap_or_else(|| UNKNOWN.into()),
                country_code: code,
                attacks: a.failed + a.alerts,
                failed_logins: a.failed,
                alerts: a.alerts,
                unique_ips: a.ips.len(),
                cities,
            }
        })
        .collect();
    out.sort_by(|x, y| {
        y.attacks
            .cmp(&x.attacks)
            .then_with(|| x.country_code.cmp(&y.country_code))
    });
    out
}

/// Attacks (failed logins and alerts) by country and city, from the `--geoip-db` database.
#[utoipa::path(
    get,
    path = "/api/v1/geo-attacks",
    tag = "multi-vm",
    params(GeoQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Attacks per country, most first", body = GeoAttacks),
        ParamErrors,
        (status = 503, description = "No GeoIP database loaded (`code` \"geoip_unavailable\": start the daemon with --geoip-db), or the store is unreachable", body = crate::api::ErrorBody),
    )
)]
pub async fn geo_attacks(
    _: Auth<Read>,
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<GeoQuery>,
) -> Result<Json<GeoAttacks>, ApiError> {
    let now = Utc::now();
    let since = parse_since(q.since.as_deref(), now)?;
    let vm = vm_filter(q.vm_id.as_deref())?;
    let Some(db) = state.geo.clone() else {
        return Err(geoip_unavailable());
    };
    let database = GeoDatabase {
        database_type: db.database_type().to_owned(),
        build_epoch: db.build_epoch(),
    };
    let events = load_events(&state, since, vm.as_deref(), true).await?;
    let alerts = alerts_of(load_alerts(&state, since).await?, vm.as_deref());
    // Lookups are in-memory but a window can hold 100,000 distinct addresses: off the async workers.
    let (events, alerts, countries) = tokio::task::spawn_blocking(move || {
        let c = by_country(&events, &alerts, |ip| db.lookup(ip));
        (events, alerts, c)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("GeoIP lookup task failed: {e}"),
        )
    })?;
    let unique_ips = events
        .iter()
        .filter(|e| e.failure)
        .map(|e| e.src_ip)
        .chain(alerts.iter().map(|a| a.src_ip))
        .collect::<BTreeSet<_>>()
        .len();
    Ok(Json(GeoAttacks {
        since,
        until: now,
        database,
        total_attacks: countries.iter().map(|c| c.attacks).sum(),
        unique_ips,
        countries,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::ips::tests::{alert, ev};
    use super::*;

    #[test]
    fn countries_group_unknowns_and_cities() {
        let events = [
            ev("81.2.69.1", "vm-a", "root", "2024-05-01T10:00:00Z", true),
            ev("81.2.69.2", "vm-a", "root", "2024-05-01T10:00:00Z", true),
            ev("81.2.69.2", "vm-a", "root", "2024-05-01T10:00:01Z", true),
            ev("10.0.0.1", "vm-a", "root", "2024-05-01T10:00:00Z", true),
            ev("81.2.69.9", "vm-a", "root", "2024-05-01T10:00:00Z", false),
        ];
        let alerts = [alert(
            "89.160.20.1",
            "vm-a",
            "port_scan",
            "2024-05-01T10:00:00Z",
            2,
        )];
        let mut lookups = 0;
        let out = by_country(&events, &alerts, |ip| {
            lookups += 1;
            match ip.to_string().as_str() {
                "81.2.69.1" | "81.2.69.2" => Location {
                    country_code: Some("GB".into()),
                    country: Some("United Kingdom".into()),
                    city: Some("London".into()),
                },
                "89.160.20.1" => Location {
                    country_code: Some("SE".into()),
                    country: Some("Sweden".into()),
                    city: None,
                },
                _ => Location::unknown(),
            }
        });
        assert_eq!(lookups, 4, "one lookup per distinct attacking address");
        let got: Vec<(&str, &str, u64, u64, u64, usize)> = out
            .iter()
            .map(|c| {
                (
                    c.country_code.as_str(),
                    c.country.as_str(),
                    c.attacks,
                    c.failed_logins,
                    c.alerts,
                    c.unique_ips,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("GB", "United Kingdom", 3, 3, 0, 2),
                ("SE", "Sweden", 2, 0, 2, 1),
                ("unknown", "unknown", 1, 1, 0, 1),
            ]
        );
        assert_eq!(out[0].cities.len(), 1);
        assert_eq!(
            (
                out[0].cities[0].city.as_str(),
                out[0].cities[0].attacks,
                out[0].cities[0].unique_ips
            ),
            ("London", 3, 2)
        );
        assert!(out[1].cities.is_empty());
    }
}
