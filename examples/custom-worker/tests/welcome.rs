//! `welcome.send` run through the test kit: no broker, no database.

use warren::workers::testing;
use warren::workers::TaskError;
use warren_example_custom_worker::{SendWelcome, Welcome};

#[tokio::test]
async fn welcomes_an_address_and_refuses_a_non_address_for_good() {
    let ana = Welcome {
        email: "ana@example.com".into(),
        name: "Ana".into(),
    };
    assert_eq!(testing::run(&SendWelcome, ana.clone()).await, Ok(()));

    let bad = Welcome {
        email: "nobody".into(),
        ..ana
    };
    let ctx = testing::context(&SendWelcome).attempt(2).build();
    let e = testing::run_with(&SendWelcome, bad, &ctx)
        .await
        .unwrap_err();
    assert!(matches!(e, TaskError::Permanent(_)), "{e:?}");
}

#[test]
fn bodies_decode_like_the_worker_decodes_them() {
    let w = testing::decode::<SendWelcome>(br#"{"email":"a@b.c","name":"A"}"#).unwrap();
    assert_eq!(w.name, "A");
    let e = testing::decode::<SendWelcome>(br#"{"email":"a@b.c"}"#).unwrap_err();
    assert!(e.contains("name"), "{e}");
}
