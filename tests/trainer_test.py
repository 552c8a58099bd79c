import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genrec import trainer


def test_schedules_warm_up_then_decay():
  inv = trainer.learning_rate_schedule(1000, 1e-3, 'inverse_sqrt', warmup_steps=100)
  np.testing.assert_allclose(inv(0), 1e-5, rtol=1e-5)  # (step + 1) / warmup
  np.testing.assert_allclose(inv(99), 1e-3, rtol=1e-5)
  np.testing.assert_allclose(inv(399), 1e-3 * np.sqrt(100 / 400), rtol=1e-5)
  cos = trainer.learning_rate_schedule(1000, 1e-3, 'cosine', warmup_steps=100)
  assert float(cos(100)) == pytest.approx(1e-3) and float(cos(1000)) == pytest.approx(0.0)
  const = trainer.learning_rate_schedule(1000, 1e-3, 'constant', warmup_steps=10)
  assert float(const(500)) == pytest.approx(1e-3)
  with pytest.raises(ValueError, match='Unknown schedule'):
    trainer.learning_rate_schedule(10, 1e-3, 'linear')


@pytest.mark.parametrize('name', ['adamw', 'adafactor'])
def test_optimizers_minimize_and_clip(name):
  tx, _ = trainer.make_optimizer(200, name=name, learning_rate=0.1, warmup_steps=1,
                                 clip_norm=1.0, weight_decay=0.0)
  params = {'w': jnp.full((4, 4), 3.0)}
  state = tx.init(params)
  loss = lambda p: jnp.sum(p['w'] ** 2)
  for _ in range(200):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < 0.05 * 144
  with pytest.raises(ValueError, match='Unknown optimizer'):
    trainer.make_optimizer(10, name='sgd')
