//! The unchanged OpenAI Python SDK against `llmgw serve`: runs tests/openai_sdk.py.
//! Needs `python3` with the `openai` package (scripts/test.sh installs it); fails, never
//! skips, when they are missing.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::{mock, openai_model, run_python_script, Gateway};
use llmgw::mock::Behavior;
use llmgw::mock_cloud::CloudMock;
use std::time::Duration;

const MASTER_KEY: &str = "sk-llmgw-sdk-test-key";

#[tokio::test(flavor = "multi_thread")]
async fn openai_python_sdk_works_unchanged() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import openai; print(openai.__version__)"])
        .output();
    match probe {
        Ok(o) if o.status.success() => eprintln!(
            "openai Python SDK {}",
            String::from_utf8_lossy(&o.stdout).trim()
        ),
        Ok(o) => panic!(
            "the OpenAI Python SDK is not installed: run `python3 -m pip install openai` \
             (scripts/test.sh does this); python3 said: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("python3 is needed for this test (scripts/test.sh installs it): {e}"),
    }

    let up = mock(
        "sdk-mock",
        Behavior {
            chunks: 5,
            chunk_delay: Duration::from_millis(100),
            ..Behavior::default()
        },
    )
    .await;
    let gemini = CloudMock::gemini("sdk-gemini", Behavior::default())
        .await
        .expect("gemini mock");
    let cfg = format!(
        "[server]\nmaster_key = \"env:LLMGW_TEST_MASTER_KEY\"\n\n{}{}\n\
         [[models]]\nname = \"gemini-embed\"\nprovider = \"gemini\"\n\
         model = \"text-embedding-004\"\napi_base = \"{}\"\n\
         api_key = \"env:LLMGW_TEST_GEMINI_KEY\"\n",
        openai_model("gpt-4o-mini", "mock-model", &up.base_url(), ""),
        openai_model("text-embedding-3-small", "mock-embed", &up.base_url(), ""),
        gemini.base_url()
    );
    let gw = Gateway::builder(&cfg)
        .env("LLMGW_TEST_MASTER_KEY", MASTER_KEY)
        .env("LLMGW_TEST_GEMINI_KEY", "gemini-test-key")
        .start()
        .await;

    let stdout = run_python_script(&gw, "openai_sdk.py", &[], MASTER_KEY).await;
    assert!(stdout.contains("openai_sdk.py: OK"), "{stdout}");
    // chat, stream, embeddings (the model list is answered by the gateway itself).
    assert!(up.state.request_count() >= 3);
    // The default (base64) and the float embedding calls both reached Gemini.
    assert!(gemini.state.request_count() >= 2);
    eprintln!("{stdout}");
}
