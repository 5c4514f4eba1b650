//! Tauri's build step: reads `tauri.conf.json`, embeds the icons and the
//! (empty) capability set.

fn main() {
    tauri_build::build();
}
