//! The static half of `cargo xtask deploy-check`: metric names in rules and
//! dashboards, and the Kubernetes manifests.

// A failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use xtask::deploy::{Manifest, Queries, exported_names, files, metric_names};

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[test]
fn metric_names_skip_functions_labels_keywords_strings_and_variables() {
    let expr = r#"sum by (job, le) (rate(http_server_request_duration_seconds_bucket{job=~"$job",code="5.."}[5m]))
        / on (job) group_left (instance) max without (pod) (up offset 5m) > bool 1e3 and keel:ratio:rate5m
        unless count(x_total) by (route)"#;
    assert_eq!(
        metric_names(expr),
        set(&["http_server_request_duration_seconds_bucket", "keel:ratio:rate5m", "up", "x_total"])
    );
    assert_eq!(metric_names("histogram_quantile(0.95, sum(rate(a_bucket[1m])) by (le))"), set(&["a_bucket"]));
}

#[test]
fn exported_names_read_the_exposition() {
    let text = "# HELP a_total A\n# TYPE a_total counter\na_total{x=\"1\"} 3\nb 1\nc_bucket{le=\"+Inf\"} 2\n";
    assert_eq!(exported_names(text), set(&["a_total", "b", "c_bucket"]));
}

#[test]
fn a_rule_or_dashboard_naming_an_unexported_metric_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    std::fs::write(
        &rules,
        "groups:\n  - name: g\n    rules:\n      - record: keel:x:rate5m\n        expr: rate(keel_known_total[5m])\n      \
         - alert: A\n        expr: keel:x:rate5m > 1 and keel_made_up_total > 0\n",
    )
    .unwrap();
    let dashboard = dir.path().join("d.json");
    std::fs::write(
        &dashboard,
        r#"{"panels":[{"type":"row","panels":[{"targets":[{"expr":"sum(rate(keel_known_total[5m]))"},{"expr":"keel_invented_seconds"}]}]}]}"#,
    )
    .unwrap();
    let queries = Queries::load(&[rules], &[dashboard]).unwrap();
    let unknown = queries.unknown(&set(&["keel_known_total"]));
    assert_eq!(unknown.len(), 2, "{unknown:?}");
    assert!(unknown[0].ends_with("A: keel_made_up_total"), "{unknown:?}");
    assert!(unknown[1].ends_with("d.json: keel_invented_seconds"), "{unknown:?}");
    assert!(queries.unknown(&set(&["keel_known_total", "keel_made_up_total", "keel_invented_seconds"])).is_empty());
}

#[test]
fn the_shipped_rules_and_dashboards_name_only_keel_metrics_or_recorded_ones() {
    let deploy = xtask::workspace_root().join("deploy");
    let rules = files(&deploy.join("prometheus/rules"), "yml").unwrap();
    let dashboards = files(&deploy.join("grafana/dashboards"), "json").unwrap();
    assert!(!rules.is_empty() && !dashboards.is_empty());
    let queries = Queries::load(&rules, &dashboards).unwrap();
    let used: BTreeSet<String> = queries.exprs.iter().flat_map(|(_, e)| metric_names(e)).collect();
    // Which of these a running api or worker exports is checked by deploy-check itself; here, that every
    // name is one of Keel's families (a typo in a prefix fails now).
    for name in &used {
        let ours = ["http_server_", "db_client_", "redis_client_", "process_", "keel_", "keel:"];
        let scraped = xtask::deploy::PER_TARGET.contains(&name.as_str());
        assert!(scraped || ours.iter().any(|p| name.starts_with(p)), "{name} is not a Keel metric");
    }
    assert!(used.contains("keel_health_status") && used.contains("keel_batcher_dropped_total"));
}

#[test]
fn every_kubernetes_manifest_parses_and_probes_existing_endpoints_on_declared_ports() {
    let manifests = Manifest::load_dir(&xtask::workspace_root().join("deploy/k8s")).unwrap();
    assert!(manifests.len() >= 3);
    let mut kinds = BTreeSet::new();
    for manifest in &manifests {
        manifest.check_static().unwrap();
        for doc in &manifest.docs {
            kinds.insert(doc["kind"].as_str().unwrap().to_owned());
        }
        for probe in &manifest.probes {
            // The health router's endpoints, served by both binaries.
            assert!(["/livez", "/readyz"].contains(&probe.path.as_str()), "{probe:?}");
        }
    }
    for kind in ["Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret"] {
        assert!(kinds.contains(kind), "no {kind} in deploy/k8s");
    }
    let probes: Vec<_> = manifests.iter().flat_map(|m| m.probes.iter().map(|p| p.binary.clone())).collect();
    assert_eq!(
        (probes.iter().filter(|b| *b == "api").count(), probes.iter().filter(|b| *b == "worker").count()),
        (3, 3)
    );

    // A probe on a port the container does not declare is refused.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let api = std::fs::read_to_string(xtask::workspace_root().join("deploy/k8s/api.yaml")).unwrap();
    std::fs::write(
        &bad,
        api.replacen("httpGet: {path: /livez, port: http}", "httpGet: {path: /livez, port: metrics}", 1),
    )
    .unwrap();
    let err = Manifest::load(&bad).unwrap().check_static().unwrap_err().to_string();
    assert!(err.contains("port \"metrics\""), "{err}");
    std::fs::write(&bad, "kind: [unclosed").unwrap();
    assert!(Manifest::load(&bad).is_err(), "invalid YAML is an error");
}

#[test]
fn compose_and_prometheus_files_are_valid_yaml() {
    let deploy = xtask::workspace_root().join("deploy");
    for file in ["compose/compose.yaml", "prometheus/prometheus.yml", "grafana/provisioning/datasources/prometheus.yml"]
    {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap_or_else(|err| panic!("{file}: {err}"));
        assert!(!docs.is_empty() && !docs[0].is_badvalue(), "{file}");
    }
    let compose = std::fs::read_to_string(deploy.join("compose/compose.yaml")).unwrap();
    let compose = &yaml_rust2::YamlLoader::load_from_str(&compose).unwrap()[0];
    for service in ["postgres", "redis", "api", "worker", "prometheus", "grafana", "jaeger"] {
        assert!(!compose["services"][service].is_badvalue(), "compose has no {service}");
    }
    assert_eq!(compose["services"]["api"]["deploy"]["replicas"].as_i64(), Some(2));
}

#[test]
fn every_alert_has_a_runbook_section_that_its_link_points_to() {
    let root = xtask::workspace_root();
    let operations = std::fs::read_to_string(root.join("docs/OPERATIONS.md")).unwrap();
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/rules/keel.yml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&rules).unwrap();
    let mut alerts = 0;
    for group in docs[0]["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            let Some(alert) = rule["alert"].as_str() else { continue };
            alerts += 1;
            assert!(operations.contains(&format!("\n### {alert}\n")), "no runbook section for {alert}");
            let annotations = &rule["annotations"];
            for key in ["summary", "description", "runbook_url"] {
                assert!(annotations[key].as_str().is_some_and(|v| !v.is_empty()), "{alert} has no {key}");
            }
            let anchor = format!("OPERATIONS.md#{}", alert.to_lowercase());
            assert!(annotations["runbook_url"].as_str().unwrap().ends_with(&anchor), "{alert}: runbook link");
        }
    }
    assert!(alerts >= 12, "{alerts} alerts");
}

#[test]
fn the_configuration_reference_is_generated_from_help_text() {
    let api = "Usage: api [OPTIONS]\n\nOptions:\n      --listen <ADDR>   Address to listen on [env: KEEL_LISTEN=0.0.0.0:1] [default: 127.0.0.1:8080]\n      \
               --no-migrate      Skip | migrations [env: KEEL_NO_MIGRATE=]\n  -h, --help            Print help\n";
    let worker = "Options:\n      --admin-listen <ADDR>  Admin address [default: 127.0.0.1:9091]\n      --no-migrate  Skip | migrations [env: KEEL_NO_MIGRATE=]\n";
    let flags = xtask::docs::parse_help(api);
    assert_eq!(flags.len(), 2);
    assert_eq!(flags[0].env.as_deref(), Some("KEEL_LISTEN"), "the current value is never shown");
    assert_eq!((flags[0].default.as_deref(), flags[0].help.as_str()), (Some("127.0.0.1:8080"), "Address to listen on"));
    let table = xtask::docs::render(api, worker);
    assert!(
        table.contains("| `--listen <ADDR>` | `KEEL_LISTEN` | `127.0.0.1:8080` | api | Address to listen on |"),
        "{table}"
    );
    assert!(table.contains("| `--no-migrate` | `KEEL_NO_MIGRATE` | — | both | Skip \\| migrations |"), "{table}");
    assert!(table.contains("| `--admin-listen <ADDR>` | — | `127.0.0.1:9091` | worker |"), "{table}");
    let spliced = xtask::docs::splice(
        "intro\n<!-- BEGIN GENERATED: cargo xtask docs -->\nold\n<!-- END GENERATED -->\nrest",
        "new\n",
    )
    .unwrap();
    assert_eq!(spliced, "intro\n<!-- BEGIN GENERATED: cargo xtask docs -->\nnew\n<!-- END GENERATED -->\nrest");
    assert!(xtask::docs::splice("no markers", "x").is_err());
}

#[test]
fn termination_grace_must_exceed_the_shutdown_budget() {
    let k8s = xtask::workspace_root().join("deploy/k8s");
    let manifests = Manifest::load_dir(&k8s).unwrap();
    xtask::deploy::check_termination_grace(&manifests).unwrap();

    // A Deployment killed before the budget runs out is refused.
    let dir = tempfile::tempdir().unwrap();
    for file in files(&k8s, "yaml").unwrap() {
        let text = std::fs::read_to_string(&file).unwrap();
        let text = text.replace("terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds: 20");
        std::fs::write(dir.path().join(file.file_name().unwrap()), text).unwrap();
    }
    let short = Manifest::load_dir(dir.path()).unwrap();
    let err = xtask::deploy::check_termination_grace(&short).unwrap_err().to_string();
    assert!(err.contains("does not cover shutdown_grace 25s"), "{err}");
}
