//! Which student of the pair: the CNN or the Transformer. A leaf every other module may name
//! (config, checkpoints, the run directory, testing) without importing the student itself.

/// The two roles of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Cnn,
    Transformer,
}

impl Role {
    pub const BOTH: [Role; 2] = [Role::Cnn, Role::Transformer];

    pub fn name(self) -> &'static str {
        match self {
            Role::Cnn => "cnn",
            Role::Transformer => "transformer",
        }
    }
}
