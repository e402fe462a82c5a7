//! The admin API as the CLI commands reach it: one request, the status and the body.

use anyhow::Context as _;

/// Sends `method url` (with a JSON `body`, if any) on a one-off runtime; (status, body text).
pub fn request(
    method: reqwest::Method,
    url: &str,
    body: Option<String>,
) -> anyhow::Result<(reqwest::StatusCode, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut r = reqwest::Client::new().request(method, url);
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b);
        }
        let r = r
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = r.status();
        anyhow::Ok((status, r.text().await?))
    })
}
