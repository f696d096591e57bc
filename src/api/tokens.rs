//! `POST /tokenize` and `POST /detokenize` (llama-server's shapes), on the model's vocabulary
//! loaded apart from the engine, so that they never wait behind generation.

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::types::{
    DetokenizeRequest, DetokenizeResponse, TokenEntry, TokenizeRequest, TokenizeResponse,
};
use super::{ApiJson, AppState};

/// `POST /tokenize`: `{"content": "...", "add_special": false, "parse_special": true,
/// "with_pieces": false}` -> `{"tokens": [ids]}` (or `[{"id", "piece"}]`).
pub async fn tokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Response, ApiError> {
    let vocab = state.engine()?.tokenizer();
    let tokens = tokio::task::spawn_blocking(move || {
        let ids = vocab
            .tokenize(&req.content, req.add_special, req.parse_special)
            .map_err(|e| ApiError::bad_param("content", e.to_string()))?;
        let entries = ids
            .into_iter()
            .map(|id| match req.with_pieces {
                false => TokenEntry::Id(id),
                true => TokenEntry::WithPiece {
                    id,
                    piece: String::from_utf8_lossy(&vocab.token_bytes(id, true)).into_owned(),
                },
            })
            .collect();
        Ok::<_, ApiError>(entries)
    })
    .await
    .map_err(|_| ApiError::internal())??;
    Ok(axum::Json(TokenizeResponse { tokens }).into_response())
}

/// `POST /detokenize`: `{"tokens": [ids]}` -> `{"content": "..."}`; every id must be in the
/// vocabulary.
pub async fn detokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Response, ApiError> {
    let vocab = state.engine()?.tokenizer();
    let ids: Vec<i32> = req
        .tokens
        .iter()
        .map(|&t| {
            i32::try_from(t)
                .ok()
                .filter(|&id| vocab.has_token(id))
                .ok_or_else(|| {
                    ApiError::bad_param(
                        "tokens",
                        format!(
                            "token {t} is not in the vocabulary ({} tokens)",
                            vocab.n_vocab()
                        ),
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    let content = tokio::task::spawn_blocking(move || vocab.detokenize(&ids))
        .await
        .map_err(|_| ApiError::internal())?;
    Ok(axum::Json(DetokenizeResponse { content }).into_response())
}
