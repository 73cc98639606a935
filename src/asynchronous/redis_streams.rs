//! PLACEHOLDER: replaced by the real store.
#![allow(unused_variables, dead_code)]

use std::time::Duration;

use uuid::Uuid;

use super::store::{
    Aborted, Attempt, Claimed, EventRecord, FunctionCounts, FunctionKey, ListQuery, NewEvent,
    Policy, Status, StoreError,
};

pub struct RedisStore;

fn missing<T>() -> Result<T, StoreError> {
    Err(StoreError::Failed("not built".into()))
}

impl RedisStore {
    pub async fn open(
        url: &crate::config::Secret,
        replica: &str,
        policy: Policy,
    ) -> Result<RedisStore, StoreError> {
        missing()
    }
    pub async fn enqueue(&self, event: NewEvent) -> Result<(), StoreError> {
        missing()
    }
    pub async fn claim(
        &self,
        function: &FunctionKey,
        lease: Duration,
    ) -> Result<Option<Claimed>, StoreError> {
        missing()
    }
    pub async fn started(&self, claimed: &Claimed, lease: Duration) -> Result<(), StoreError> {
        missing()
    }
    pub async fn finish(&self, claimed: &Claimed, attempt: Attempt) -> Result<Status, StoreError> {
        missing()
    }
    pub async fn get(&self, id: Uuid) -> Result<Option<EventRecord>, StoreError> {
        missing()
    }
    pub async fn list(
        &self,
        function: &FunctionKey,
        query: &ListQuery,
    ) -> Result<Vec<EventRecord>, StoreError> {
        missing()
    }
    pub async fn abort(&self, id: Uuid) -> Result<Aborted, StoreError> {
        missing()
    }
    pub async fn counts(&self) -> Result<Vec<FunctionCounts>, StoreError> {
        missing()
    }
    pub async fn purge(&self) -> Result<u64, StoreError> {
        missing()
    }
    pub async fn once(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        missing()
    }
}
