//! Reading a process's `/healthz`, `/readyz` and `/metrics`.

/// GETs `path` from one of these servers (`addr` is host:port) and returns
/// the status and body, for probes, drills and tests. No connection is
/// kept idle: callers run on many runtimes (one per test), and a pooled
/// connection belongs to the runtime that opened it.
pub async fn fetch(addr: &str, path: &str) -> Option<(u16, String)> {
    static CLIENT: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(|| {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_default()
    });
    let resp = CLIENT
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

/// The sum of every sample of `metric` (all label sets; `metric{…}`
/// selects one) that a process serves on `addr`, or `None` if it does not
/// answer.
pub async fn scrape(addr: &str, metric: &str) -> Option<f64> {
    let (_, body) = fetch(addr, "/metrics").await?;
    Some(sum_samples(&body, metric))
}

/// The value of the one sample named exactly `name_and_labels` (labels
/// as written), if the exposition has it.
pub fn sample(body: &str, name_and_labels: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The sum of the samples of `metric` in a Prometheus text exposition.
pub fn sum_samples(body: &str, metric: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let matches = if metric.contains('{') {
                name == metric
            } else {
                name == metric || name.starts_with(&format!("{metric}{{"))
            };
            matches.then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::sum_samples;

    #[test]
    fn sums_every_label_set_or_the_one_named() {
        let body = "# HELP x\nesi_worker_jobs_total{result=\"failed\"} 2\nesi_worker_jobs_total{result=\"completed\"} 5\nesi_worker_jobs_totals 9\nesi_worker_claimed_total 3\n";
        assert_eq!(sum_samples(body, "esi_worker_jobs_total"), 7.0);
        assert_eq!(
            sum_samples(body, "esi_worker_jobs_total{result=\"failed\"}"),
            2.0
        );
        assert_eq!(sum_samples(body, "esi_worker_claimed_total"), 3.0);
        assert_eq!(sum_samples(body, "absent"), 0.0);
    }
}
