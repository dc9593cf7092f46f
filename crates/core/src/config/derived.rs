//! What several layers derive from `[[models]]` the same way: each entry's deployment
//! id (the router's, placement's and spend's name for it) and its prices.

use super::{ModelConfig, ProviderKind};

/// Each entry's deployment id, as the router names them: its `id`, else `<group>-<n>`
/// with `n` its position in the group, from 1.
pub fn deployment_ids(models: &[ModelConfig]) -> Vec<String> {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    models
        .iter()
        .map(|m| {
            let group = m.name.get_ref().as_str();
            let n = seen.entry(group).or_insert(0);
            *n += 1;
            m.id.clone().unwrap_or_else(|| format!("{group}-{n}"))
        })
        .collect()
}

/// USD per million (input, output) tokens of well-known cloud models, matched by the
/// longest prefix of the upstream model id. Override per deployment with
/// `input_cost_per_mtok` / `output_cost_per_mtok`.
pub const BUILTIN_PRICES: &[(&str, f64, f64)] = &[
    ("gpt-5-nano", 0.05, 0.40),
    ("gpt-5-mini", 0.25, 2.00),
    ("gpt-5", 1.25, 10.00),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1", 2.00, 8.00),
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4o", 2.50, 10.00),
    ("gpt-4-turbo", 10.00, 30.00),
    ("gpt-3.5-turbo", 0.50, 1.50),
    ("o4-mini", 1.10, 4.40),
    ("o3-mini", 1.10, 4.40),
    ("o3", 2.00, 8.00),
    ("o1-mini", 1.10, 4.40),
    ("o1", 15.00, 60.00),
    ("text-embedding-3-small", 0.02, 0.0),
    ("text-embedding-3-large", 0.13, 0.0),
    ("text-embedding-ada-002", 0.10, 0.0),
    ("claude-opus-4", 15.00, 75.00),
    ("claude-sonnet-4", 3.00, 15.00),
    ("claude-haiku-4", 1.00, 5.00),
    ("claude-3-7-sonnet", 3.00, 15.00),
    ("claude-3-5-sonnet", 3.00, 15.00),
    ("claude-3-5-haiku", 0.80, 4.00),
    ("claude-3-opus", 15.00, 75.00),
    ("claude-3-haiku", 0.25, 1.25),
    ("gemini-2.5-pro", 1.25, 10.00),
    ("gemini-2.5-flash-lite", 0.10, 0.40),
    ("gemini-2.5-flash", 0.30, 2.50),
    ("gemini-2.0-flash-lite", 0.075, 0.30),
    ("gemini-2.0-flash", 0.10, 0.40),
    ("gemini-1.5-pro", 1.25, 5.00),
    ("gemini-1.5-flash", 0.075, 0.30),
];

/// The built-in price of an upstream model id, if it is a well-known one.
pub fn builtin_price(model: &str) -> Option<(f64, f64)> {
    let model = model.strip_prefix("models/").unwrap_or(model);
    BUILTIN_PRICES
        .iter()
        .filter(|(p, _, _)| model.starts_with(p))
        .max_by_key(|(p, _, _)| p.len())
        .map(|&(_, i, o)| (i, o))
}

/// A deployment's (input, output) USD per million tokens.
pub fn prices_for(m: &ModelConfig) -> (f64, f64) {
    let cloud = match m.provider {
        ProviderKind::Azure | ProviderKind::Anthropic | ProviderKind::Gemini => true,
        ProviderKind::Sglang => false,
        ProviderKind::Openai => {
            m.launch.is_none()
                && m.api_base
                    .as_ref()
                    .is_none_or(|b| b.get_ref().contains("api.openai.com"))
        }
    };
    let model = m.model.as_deref().unwrap_or(m.name.get_ref());
    let table = cloud.then(|| builtin_price(model)).flatten();
    (
        m.input_cost_per_mtok.or(table.map(|t| t.0)).unwrap_or(0.0),
        m.output_cost_per_mtok.or(table.map(|t| t.1)).unwrap_or(0.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_prices_by_longest_prefix() {
        assert_eq!(builtin_price("gpt-4o-mini-2024-07-18"), Some((0.15, 0.60)));
        assert_eq!(builtin_price("gpt-4o-2024-08-06"), Some((2.50, 10.00)));
        assert_eq!(
            builtin_price("models/gemini-2.0-flash-001"),
            Some((0.10, 0.40))
        );
        assert_eq!(builtin_price("Qwen/Qwen3-0.6B"), None);
    }

    #[test]
    fn local_models_are_free_unless_priced() {
        let cfg = |extra: &str| {
            let text = format!("[[models]]\nname = \"m\"\n{extra}\n");
            super::super::Config::load_str(&text, "t.toml")
                .unwrap()
                .config
                .models
                .remove(0)
        };
        let local =
            cfg("provider = \"openai\"\nmodel = \"gpt-4o\"\napi_base = \"http://127.0.0.1:1/v1\"");
        assert_eq!(prices_for(&local), (0.0, 0.0));
        let cloud = cfg("provider = \"openai\"\nmodel = \"gpt-4o\"");
        assert_eq!(prices_for(&cloud), (2.5, 10.0));
        let priced = cfg("provider = \"openai\"\nmodel = \"q\"\napi_base = \"http://127.0.0.1:1/v1\"\ninput_cost_per_mtok = 0.5\noutput_cost_per_mtok = 1.5");
        assert_eq!(prices_for(&priced), (0.5, 1.5));
        let overridden = cfg(
            "provider = \"anthropic\"\nmodel = \"claude-sonnet-4-5\"\ninput_cost_per_mtok = 1.0",
        );
        assert_eq!(prices_for(&overridden), (1.0, 15.0));
    }
}
