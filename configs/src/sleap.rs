//! The sleap-nn configuration family (pose estimation).

use crate::schema::Ctx;
use crate::section;

section! {
    pub struct SleapNnConfig {
        name: String = String::new(),
    }
}

impl SleapNnConfig {
    pub fn validate(&self, _cx: &mut Ctx) {}

    pub fn summary(&self) -> String {
        self.name.clone()
    }
}
